"""Byte scans of the stream paths: compiled (``bytescan.c``) where the build made them, these twins otherwise.

Three operations that every streamed chunk pays for and that CPython's bytes methods do badly on JSON:
``bytes.replace`` of a model name reads every byte (its skip filter holds JSON's common characters),
counting the events of a block takes two full passes, and re-framing a run of text chunks takes a split,
a slice per event and a decode. The compiled forms read a block once with ``memchr``/``memmem``
(bench/README.md, "A compiled helper for the stream paths"). The Python forms here are the reference:
the tests hold both to the same answers, and ``COMPILED`` says which one this process runs.
"""

from __future__ import annotations

import msgspec

__all__ = ["COMPILED", "reframe", "replace", "sse_events", "py_reframe", "py_replace", "py_sse_events"]

_strings = msgspec.json.Decoder(list[str])


def py_replace(data: bytes, old: bytes, new: bytes) -> bytes:
    """Every ``old`` in ``data`` as ``new`` (bytes.replace)."""
    return data.replace(old, new)


def py_sse_events(block: bytes) -> tuple[int, bool]:
    """(events, clean) of a block of whole server-sent events (it ends with a blank line). Clean: the block
    is nothing but one-line ``data:`` events, and events is how many; otherwise events is the blank lines."""
    # if every newline belongs to a b"\n\ndata:" or the final blank line, the block is one-line data
    # events only, exactly ``data`` of them
    data = block.count(b"\n\ndata:") + block.startswith(b"data:")
    if block.count(b"\n") == 2 * data:
        return data, True
    return block.count(b"\n\n"), False


def py_reframe(block: bytes, prefix: bytes, suffix: bytes, out_prefix: bytes,
               out_suffix: bytes) -> tuple[bytes, int] | None:
    """The run of events ``prefix + S + suffix`` (each ``S`` one non-empty JSON string) that a block opens
    with, as ``out_prefix + S + out_suffix`` each, and where the run ends; None when there is none.

    ``S`` is carried as it came, escapes and all. The compiled form reads the strings one by one and
    stops at the first event that is not one; this twin takes the block up to its last ``suffix`` whole or
    not at all (the encoder then goes event by event, so the events a caller gets are the same): the
    texts cut out of every other line (an event's line, then its blank one), joined again with
    ``suffix + prefix``, must give back the block byte for byte (a memcmp), and the texts alone must
    decode as exactly as many JSON strings, none empty. A JSON string holds no raw newline and no
    unescaped quote, so nothing a model writes can fool this.
    """
    if not block.startswith(prefix):
        return None
    end = block.rfind(suffix)
    if end < 0:
        return None
    end += len(suffix)
    head = block[:end] if end != len(block) else block
    lp, ls = len(prefix), len(suffix) - 2  # the suffix ends with the event's blank line
    texts = [line[lp:-ls] for line in head.split(b"\n")[0:-1:2]]
    if (suffix + prefix).join(texts) != head[lp:-len(suffix)]:
        return None
    try:
        strings = _strings.decode(b"[" + b",".join(texts) + b"]")
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(strings) != len(texts) or "" in strings:
        return None
    return out_prefix + (out_suffix + out_prefix).join(texts) + out_suffix, end


try:
    from ._bytescan import reframe, replace, sse_events  # type: ignore[import-not-found]
    COMPILED = True
except ImportError:  # not built (a checkout on PYTHONPATH, a platform without a compiler): the twins
    reframe, replace, sse_events = py_reframe, py_replace, py_sse_events
    COMPILED = False
