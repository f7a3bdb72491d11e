"""An entry as it is stored: its answer already encoded, whole and as stream events, so a hit only joins bytes.

``prepare`` encodes an ``Entry`` once, when it is kept: the whole chat completion and each event of its stream
are stored without the three members that differ per answer (``id``, ``created``, ``model``), which come
first in each object, so a hit writes ``{"id":…,"object":…,"created":…,"model":…`` and the stored rest (no
decode of the answer, no dicts, no re-encode). The bytes equal ``entry.whole``/``entry.events`` (their
reference, held to it by tests/cache/test_entry_wire.py) but for the id and time. Stored as msgpack: its
bytes fields decode as copies, not parses. An id is unique, not secret: a per-process random prefix and a
counter (``os.urandom`` per answer was 3% of a hit's samples).
"""

from __future__ import annotations

import itertools
import time

import msgspec

from ..core.ids import _BOOT
from .entry import Answer, Entry, _calls, _usage

_json = msgspec.json.encode
_counter = itertools.count(1)


class Prepared(msgspec.Struct, array_like=True):
    prompt_tokens: int
    completion_tokens: int
    tail: bytes  # the whole completion after its model: ,"choices":[…],"usage":{…}}
    deltas: list[bytes]  # each stream event after its model: ,"choices":[…]}  (without the usage event)
    usage: bytes  # the usage event after its model: ,"choices":[],"usage":{…}}


encode = msgspec.msgpack.encode
decoder = msgspec.msgpack.Decoder(Prepared)


def _choice_events(a: Answer) -> list[dict]:
    out: list[dict] = [{"index": a.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                        "finish_reason": None}]
    if a.content:
        out.append({"index": a.index, "delta": {"content": a.content}, "logprobs": None, "finish_reason": None})
    if a.calls:
        out.append({"index": a.index, "delta": {"tool_calls": _calls(a, True)}, "logprobs": None, "finish_reason": None})
    out.append({"index": a.index, "delta": {}, "logprobs": None, "finish_reason": a.finish_reason})
    return out


def _after_model(obj: dict) -> bytes:
    """``obj`` (its first member a placeholder model) encoded from just after that member, with the comma."""
    raw = _json({"model": 0, **obj})
    return raw[len(b'{"model":0'):]


def prepare(e: Entry) -> Prepared:
    """The entry's answers encoded once, whole and as events (the reference: ``entry.whole``, ``entry.events``)."""
    choices = []
    for a in e.choices:
        msg: dict = {"role": "assistant", "content": a.content}
        if a.calls:
            msg["tool_calls"] = _calls(a, False)
        choices.append({"index": a.index, "message": msg, "logprobs": None, "finish_reason": a.finish_reason})
    tail = _after_model({"choices": choices, "usage": _usage(e)})
    deltas = [_after_model({"choices": [ev]}) for a in e.choices for ev in _choice_events(a)]
    return Prepared(e.prompt_tokens, e.completion_tokens, tail, deltas, _after_model({"choices": [], "usage": _usage(e)}))


def fresh_id() -> bytes:
    return b"chatcmpl-" + f"{_BOOT}{next(_counter):x}".encode()


def whole(p: Prepared, model: bytes) -> bytes:
    """The answer as a chat completion with a fresh id and time (``model``: a JSON string)."""
    return b"".join((b'{"id":"', fresh_id(), b'","object":"chat.completion","created":', str(int(time.time())).encode(),
                     b',"model":', model, p.tail))


def events(p: Prepared, model: bytes, include_usage: bool) -> bytes:
    """The answer as one chat stream's events (role, text, tool calls, finish, usage if asked, ``[DONE]``)."""
    head = b"".join((b'data: {"id":"', fresh_id(), b'","object":"chat.completion.chunk","created":',
                     str(int(time.time())).encode(), b',"model":', model))
    parts = [head + d for d in p.deltas]
    if include_usage:
        parts.append(head + p.usage)
    parts.append(b"data: [DONE]")
    return b"\n\n".join(parts) + b"\n\n"
