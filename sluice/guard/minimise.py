"""Output minimisation: a reply carries only what the OpenAI API documents a caller needs.

On by default for chat completions and legacy completions, with no guardrails configured. A reply keeps ``BASE_*``;
anything else (``logprobs``, ``system_fingerprint``, vLLM's ``stop_reason``, ``prompt_logprobs``,
``kv_transfer_params``, ``token_ids``..., fields no one has named yet) is stripped unless the caller's
``expose`` set lists it. A ``Shape`` is one expose set, compiled once and shared.

Cheap when nothing must go: a whole reply is decoded once into strict typed structs (unknown
fields refused, the known vendor fields allowed only as ``null``) and, when that succeeds, goes
out as the very bytes it came in; only a reply that fails it is decoded whole, stripped and
re-encoded. A block of stream events gets the same check in one decode (the events joined into a
JSON array); scalar vendor fields (OpenAI's fingerprint on every chunk) are cut from the bytes,
and only events still failing are decoded and rewritten. In a stream a ``null`` vendor field says
nothing and stays where stripping it would cost a rewrite.

By default (``stream_check: sampled``) a stream is checked on the events where vendors' fields show:
its first ``FIRST_EVENTS`` and those that close it (``sampled`` picks them); once one of them has
something to strip, every event after it is checked. A field that first shows mid-stream passes:
``every_event`` checks them all, at ~1 µs per event.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

# Fields of a completion, a choice and a message that every caller gets; others need `expose`.
BASE_REPLY = frozenset({"id", "object", "created", "model", "choices", "usage", "service_tier"})
BASE_CHOICE = frozenset({"index", "message", "delta", "finish_reason", "text"})  # text: a legacy completion's
BASE_MESSAGE = frozenset({"role", "content", "tool_calls", "refusal", "function_call", "annotations"})
# Fields OpenAI or vLLM write, often as null: null passes untouched, any other value is stripped.
VENDOR = ("logprobs", "system_fingerprint", "stop_reason", "reasoning_content", "reasoning", "prompt_logprobs",
          "prompt_token_ids", "token_ids", "kv_transfer_params", "audio", "obfuscation")

# Types of the basics where they are plain: typed decoding is ~17% cheaper than Any on the bench stream.
_TYPES: dict[str, Any] = {"id": str, "object": str, "created": int, "model": str, "index": int, "finish_reason": str | None,
                          "role": str, "content": str | None, "service_tier": str | None, "refusal": str | None,
                          "text": str | None}
_decode = msgspec.json.decode
_END = b"data: [DONE]\n\n"
_encode = msgspec.json.encode


def strip(d: dict[str, Any], base: frozenset[str], expose: frozenset[str], nulls: bool = False) -> bool:
    """Drop fields beyond ``base`` not exposed; in streams, null ones stay (they say nothing, and cost a rewrite)."""
    extra = [k for k, v in d.items() if k not in base and k not in expose and (nulls or v is not None)]
    for k in extra:
        del d[k]
    return bool(extra)


def strip_reply(d: Any, expose: frozenset[str], nulls: bool) -> bool:
    """Minimise a decoded reply or stream event in place, at every level; whether anything went."""
    if not isinstance(d, dict) or "choices" not in d:  # not a completion (an error body): as it came
        return False
    changed = strip(d, BASE_REPLY, expose, nulls)
    for choice in d.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        changed |= strip(choice, BASE_CHOICE, expose, nulls)
        for part in ("message", "delta"):
            msg = choice.get(part)
            if isinstance(msg, dict):
                changed |= strip(msg, BASE_MESSAGE, expose, nulls)
    return changed


def _strict(name: str, base: frozenset[str], expose: frozenset[str], nested: dict[str, Any]) -> type:
    """A struct that decodes only a level with nothing to strip: base and exposed fields, vendor ones as null."""
    fields: list[tuple[str, Any, Any]] = [(f, nested.get(f, Any if f in expose else _TYPES.get(f, Any)), None)
                                          for f in sorted(base | expose)]
    fields += [(f, None, None) for f in VENDOR if f not in base and f not in expose]
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True, gc=False)


_SCALAR = rb'(?:"(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false)'
# which vendor field failed the strict decode: "Expected `null`, got `str` - at `$[0].system_fingerprint`"
_FAILED = re.compile(r"^Expected `null`, got `\w+` - at `[^`]*\.(\w+)`$")


def _removers(name: str) -> tuple[re.Pattern[bytes], re.Pattern[bytes]]:
    """A field with a scalar value and the comma after it; the same field last in its object.
    Both begin with the quoted name, so the regex engine skips ahead to it at memchr speed."""
    key = b'"' + name.encode() + rb'"\s*:\s*' + _SCALAR
    return re.compile(key + rb'\s*,'), re.compile(key + rb'(?=\s*\})')


class Shape:
    """One expose set, compiled: the strict probe types for whole replies and first stream events."""

    __slots__ = ("expose", "_reply", "_events", "_removers")

    def __init__(self, expose: frozenset[str]) -> None:
        self.expose = expose
        message = _strict("Message", BASE_MESSAGE, expose, {})
        choice = _strict("Choice", BASE_CHOICE, expose, {"message": message | None, "delta": message | None})
        reply = _strict("Reply", BASE_REPLY, expose, {"choices": list[choice] | None})  # type: ignore[valid-type]
        self._reply: Callable[[bytes], Any] = msgspec.json.Decoder(reply).decode
        self._events: Callable[[bytes], Any] = msgspec.json.Decoder(list[reply]).decode  # type: ignore[valid-type]
        self._removers = {f: _removers(f) for f in VENDOR if f not in expose}

    def clean(self, body: bytes) -> bool | None:
        """Whether a whole reply (or one event) has nothing to strip; None if it is not JSON at all."""
        try:
            self._reply(body)
        except msgspec.ValidationError:
            return False
        except msgspec.DecodeError:
            return None
        return True

    def minimise(self, body: bytes) -> bytes:
        """A whole reply with only what the caller may see: the same bytes when nothing must go."""
        if self.clean(body) is not False:  # clean, or not JSON (passed on as it came, as before)
            return body
        d = _decode(body)
        strip_reply(d, self.expose, True)
        return _encode(d)

    def clean_events(self, block: bytes) -> tuple[bytes, bool]:
        """(the block, whether it now has nothing to strip), in one decode of its ``data: {...}``
        events joined into a JSON array (a raw newline cannot be inside a JSON string).

        A vendor field with a scalar value (OpenAI's fingerprint, the same on every chunk) is cut
        from the bytes, every copy of it at once, and the block checked again. Anything else in the
        block (comments, other SSE fields, objects to strip) says False: the caller then goes event
        by event.
        """
        body, end = (block[:-len(_END)], _END) if block.endswith(_END) else (block, b"")
        if not body:
            return block, True
        if not body.startswith(b"data: {") or not body.endswith(b"}\n\n"):
            return block, False
        for _ in range(8):  # a few distinct values; a new one on every chunk goes event by event
            try:
                self._events(_joined(body))
                return body + end, True
            except msgspec.ValidationError as exc:  # a DecodeError too: first
                cut = self._cut(body, str(exc))
                if cut is None:
                    break
                body = cut
            except msgspec.DecodeError:
                break
        return body + end, False

    def pure(self, events: bytes) -> bool:
        """Whether ``data: {...}`` events (no ``[DONE]``) have nothing to strip, as they are: one
        strict decode, nothing cut. False for anything else, so the caller checks every event."""
        if not events.startswith(b"data: {") or not events.endswith(b"}\n\n"):
            return not events
        try:
            self._events(_joined(events))
        except (msgspec.ValidationError, msgspec.DecodeError):
            return False
        return True

    def _cut(self, body: bytes, error: str) -> bytes | None:
        """``body`` without every copy of the scalar vendor field the strict decode failed on, or None."""
        failed = _FAILED.match(error)
        removers = self._removers.get(failed.group(1)) if failed is not None else None
        if removers is None:
            return None
        with_comma, last = removers
        m = with_comma.search(body)
        if m is not None:
            return body.replace(m.group(0), b"")
        m = last.search(body)
        if m is None:
            return None
        comma = body.rfind(b",", 0, m.start())
        if comma < 0 or body[comma + 1:m.start()].strip():
            return None
        return body.replace(body[comma:m.end()], b"")


def _joined(body: bytes) -> bytes:
    """``data: {...}`` events as one JSON array (a raw newline cannot be inside a JSON string)."""
    return b"[" + body[6:-2].replace(b"\n\ndata: ", b",") + b"]"


# `sampled` stream checking: a stream's first events are strictly checked, where vendors' fields
# first show (the role chunk, vLLM's reasoning_content, OpenAI's fingerprint and obfuscation)
FIRST_EVENTS = 8


def sampled(block: bytes, first: int) -> tuple[bytes, int]:
    """(the events of a block that ``sampled`` checking decodes strictly, how many of them are a
    stream's first events): the block's first ``first`` events, and the events at its end that
    carry a non-null ``finish_reason`` or ``usage`` (vLLM's stop_reason sits in the finish chunk).

    Found with a few short searches (each C call costs more than its bytes on the bench machine):
    the head by one split, the tail backwards from the end, stopping at the first event that closes
    nothing; the middle is never read. A quoted key is never inside a JSON string (quotes there are
    escaped); a value spaced any other way than ``:null`` or ``: null`` counts as set.
    """
    end = len(block) - len(_END) if block.endswith(_END) else len(block)
    head = n = 0
    if first:
        pieces = block.split(b"\n\n", first)
        n = len(pieces) - 1  # events in the head (a [DONE] among them is cut off below)
        head = min(end, len(block) - len(pieces[-1]))
    start = end
    while start > head:
        i = block.rfind(b"\n\n", head, start - 2)
        at = head if i < 0 else i + 2
        if block.startswith(b"data: {", at):  # anything else is checked, fails, and turns on every event
            i = block.find(b'"finish_reason"', at, start)
            if i < 0 or block.startswith(_NULL, i + 15):
                i = block.find(b'"usage"', at, start)
                if i < 0 or block.startswith(_NULL, i + 7):
                    break
        start = at
    if start == end:
        return block[:head], n
    return block[:head] + block[start:end], n


_NULL = (b":null", b": null")


_SHAPES: dict[frozenset[str], Shape] = {}


def shape(expose: frozenset[str]) -> Shape:
    """The shared ``Shape`` of an expose set (few distinct sets: they come from the policy)."""
    got = _SHAPES.get(expose)
    if got is None:
        if len(_SHAPES) > 1024:
            _SHAPES.clear()
        got = _SHAPES[expose] = Shape(expose)
    return got
