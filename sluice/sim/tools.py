"""Tool calls and scripted text, driven by the last user message so tests are deterministic.

``sim:call NAME {json args}`` (one line per call; several lines: parallel calls) answers a request
that offers tools with ``tool_calls``; streamed the way vLLM streams them: the call's id and name
first, then its arguments in many small fragments, one call after another, then
``finish_reason: tool_calls``. ``sim:say a|b|c`` answers with exactly that text, one chunk per
``|``-separated piece (a secret split across chunks, for instance).
"""

from __future__ import annotations

from typing import Any

from .replica import encode
from .schema import ChatRequest

_FRAGMENT = 5  # characters of arguments per streamed chunk


def _last_user(req: ChatRequest) -> str:
    """The last user message's text: a string, or its text parts one per line."""
    for m in reversed(req.messages):
        if m.role == "user":
            if isinstance(m.content, str):
                return m.content
            if isinstance(m.content, list):
                return "\n".join(p["text"] for p in m.content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def scripted_calls(req: ChatRequest) -> list[tuple[str, str]] | None:
    """(name, arguments) of each ``sim:call`` line, when the request offers tools."""
    return calls_in(_last_user(req)) if req.tools else None


def scripted_words(req: ChatRequest) -> list[str] | None:
    return words_in(_last_user(req))


def calls_in(text: str) -> list[tuple[str, str]] | None:
    """(name, arguments) of each ``sim:call`` line of a user's text."""
    calls = []
    for line in text.splitlines():
        if line.startswith("sim:call "):
            name, _, args = line[len("sim:call "):].strip().partition(" ")
            calls.append((name, args.strip() or "{}"))
    return calls or None


def words_in(text: str) -> list[str] | None:
    """The pieces of a ``sim:say`` text."""
    if not text.startswith("sim:say "):
        return None
    return [w for w in text[len("sim:say "):].split("|") if w]


def call_message(calls: list[tuple[str, str]], ids: list[str]) -> dict[str, Any]:
    return {"role": "assistant", "content": None,
            "tool_calls": [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                           for i, (n, a) in zip(ids, calls)]}


def call_events(head: dict[str, Any], calls: list[tuple[str, str]], ids: list[str]) -> list[bytes]:
    """The chunks of a streamed tool-call answer (no usage, no [DONE]: the caller adds them)."""

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return b"data: " + encode({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                         "finish_reason": finish}]}) + b"\n\n"

    out = [event({"role": "assistant", "content": None})]
    for k, ((name, args), call_id) in enumerate(zip(calls, ids)):
        out.append(event({"tool_calls": [{"index": k, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        for at in range(0, len(args), _FRAGMENT):
            out.append(event({"tool_calls": [{"index": k, "function": {"arguments": args[at:at + _FRAGMENT]}}]}))
    out.append(event({}, "tool_calls"))
    return out
