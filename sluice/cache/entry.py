"""A cached answer in the chat form, kept to its basics, and served again whole or as a stream.

An entry keeps per choice only the text, the tool calls and the finish reason (no id, time, logprobs or
vendor field, so nothing one caller's output shape allowed reaches another), and the answer's token
counts. It is made from a whole chat completion or from the events of a chat stream as the caller got
them (after guard-out), and served again in either form with a fresh id and time: a whole answer to a
streaming request becomes a valid chat event stream, ended by ``[DONE]``. The other APIs' adapters
re-encode that chat answer as they re-encode any other.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec


class Call(msgspec.Struct, array_like=True):
    id: str
    name: str
    arguments: str


class Answer(msgspec.Struct, array_like=True):
    index: int
    content: str | None
    calls: list[Call]
    finish_reason: str | None


class Entry(msgspec.Struct, array_like=True):
    choices: list[Answer]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def has_calls(self) -> bool:
        return any(c.calls for c in self.choices)


_encode = msgspec.json.encode
entry_decoder = msgspec.json.Decoder(Entry)


class _Fn(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _Call(msgspec.Struct):
    index: int | None = None
    id: str | None = None
    function: _Fn | None = None


class _Msg(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_Call] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Msg | None = None
    delta: _Msg | None = None
    finish_reason: str | None = None


class _Completion(msgspec.Struct):
    choices: list[_Choice] = msgspec.field(default_factory=list)
    error: Any = None


_completion = msgspec.json.Decoder(_Completion)


def from_whole(body: bytes, prompt_tokens: int, completion_tokens: int) -> Entry | None:
    """The entry of a whole chat completion; None when it is not one (an error, an odd body)."""
    try:
        c = _completion.decode(body)
    except msgspec.DecodeError:
        return None
    if c.error is not None or not c.choices:
        return None
    out = []
    for ch in c.choices:
        m = ch.message
        if m is None:
            return None
        calls = [Call(t.id or "", (t.function.name or "") if t.function else "", (t.function.arguments or "") if t.function else "")
                 for t in m.tool_calls or ()]
        out.append(Answer(ch.index, m.content, calls, ch.finish_reason))
    return Entry(out, prompt_tokens, completion_tokens)


def from_stream(parts: list[bytes], prompt_tokens: int, completion_tokens: int) -> Entry | None:
    """The entry of a chat stream's events as sent; None unless it ended with ``[DONE]`` and every choice finished."""
    texts: dict[int, list[str]] = {}
    calls: dict[int, dict[int, list[str]]] = {}  # choice -> call index -> [id, name, arguments...]
    finish: dict[int, str | None] = {}
    done = False
    for raw in b"".join(parts).replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            continue  # a keepalive comment, or the end
        data = b"\n".join(lines)
        if data == b"[DONE]":
            done = True
            continue
        try:
            c = _completion.decode(data)
        except msgspec.DecodeError:
            return None
        if c.error is not None:
            return None
        for ch in c.choices:
            d = ch.delta
            texts.setdefault(ch.index, [])
            if d is not None:
                if d.content:
                    texts[ch.index].append(d.content)
                for t in d.tool_calls or ():
                    got = calls.setdefault(ch.index, {}).setdefault(t.index or 0, ["", ""])
                    if t.id:
                        got[0] = t.id
                    if t.function is not None:
                        if t.function.name:
                            got[1] = t.function.name
                        if t.function.arguments:
                            got.append(t.function.arguments)
            if ch.finish_reason is not None:
                finish[ch.index] = ch.finish_reason
    if not done or not texts or set(finish) != set(texts):
        return None
    out = []
    for i in sorted(texts):
        cs = [Call(v[0], v[1], "".join(v[2:])) for _, v in sorted(calls.get(i, {}).items())]
        out.append(Answer(i, "".join(texts[i]) if texts[i] or not cs else None, cs, finish[i]))
    return Entry(out, prompt_tokens, completion_tokens)


def _fresh_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def _calls(a: Answer, stream: bool) -> list[dict[str, Any]]:
    out = []
    for k, c in enumerate(a.calls):
        call: dict[str, Any] = {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        if stream:
            call["index"] = k
        out.append(call)
    return out


def _usage(e: Entry) -> dict[str, int]:
    return {"prompt_tokens": e.prompt_tokens, "completion_tokens": e.completion_tokens,
            "total_tokens": e.prompt_tokens + e.completion_tokens}


def whole(e: Entry, model: str) -> bytes:
    """The entry as a chat completion with a fresh id and time."""
    choices = []
    for a in e.choices:
        msg: dict[str, Any] = {"role": "assistant", "content": a.content}
        if a.calls:
            msg["tool_calls"] = _calls(a, False)
        choices.append({"index": a.index, "message": msg, "logprobs": None, "finish_reason": a.finish_reason})
    return _encode({"id": _fresh_id(), "object": "chat.completion", "created": int(time.time()), "model": model,
                    "choices": choices, "usage": _usage(e)})


def events(e: Entry, model: str, include_usage: bool) -> bytes:
    """The entry as one chat stream's events (role, text, tool calls, finish, usage if asked, ``[DONE]``)."""
    head = {"id": _fresh_id(), "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    out = []

    def event(choices: list[dict[str, Any]], **more: Any) -> None:
        out.append(b"data: " + _encode({**head, "choices": choices, **more}) + b"\n\n")

    for a in e.choices:
        event([{"index": a.index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
        if a.content:
            event([{"index": a.index, "delta": {"content": a.content}, "logprobs": None, "finish_reason": None}])
        if a.calls:
            event([{"index": a.index, "delta": {"tool_calls": _calls(a, True)}, "logprobs": None, "finish_reason": None}])
        event([{"index": a.index, "delta": {}, "logprobs": None, "finish_reason": a.finish_reason}])
    if include_usage:
        event([], usage=_usage(e))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def encode(e: Entry) -> bytes:
    return _encode(e)
