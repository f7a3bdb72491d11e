"""Chat completions built for tests: a whole reply and the SSE stream an OpenAI-compatible
upstream (vLLM's way) sends for the same reply, its text and arguments in the given pieces; and the
pieces of replies the stream encoders' property tests draw (``text_piece``, ``draw_calls``)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

Call = tuple[str, str, list[str]]  # id, name, argument pieces
text_piece = st.text(min_size=1, max_size=12)
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                          max_leaves=8)


def draw_calls(draw: st.DrawFn, names: list[str]) -> list[Call]:
    """Up to three tool calls named from ``names``, their JSON-object arguments cut into pieces anywhere."""
    calls = []
    for k in range(draw(st.integers(0, 3))):
        args = json.dumps(draw(st.dictionaries(st.text(max_size=8), json_value, max_size=4)))
        cut = sorted(draw(st.lists(st.integers(0, len(args)), max_size=4)))
        pieces = [args[a:b] for a, b in zip([0, *cut], [*cut, len(args)]) if args[a:b]]
        calls.append((f"call_{k}", draw(st.sampled_from(names)), pieces))
    return calls


def whole(text_pieces: list[str], calls: list[Call], finish: str, usage: dict[str, Any] | None,
          stop_reason: str | None = None, chat_id: str = "chatcmpl-abc123", model: str = "sim-small") -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text_pieces) or None}
    if calls:
        message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": "".join(a)}}
                                 for i, n, a in calls]
    out: dict[str, Any] = {"id": chat_id, "object": "chat.completion", "created": 1, "model": model,
                           "choices": [{"index": 0, "message": message, "finish_reason": finish,
                                        "stop_reason": stop_reason}]}
    if usage is not None:
        out["usage"] = usage
    return out


def stream(text_pieces: list[str], calls: list[Call], finish: str, usage: dict[str, Any] | None,
           stop_reason: str | None = None, chat_id: str = "chatcmpl-abc123", model: str = "sim-small") -> bytes:
    head = {"id": chat_id, "object": "chat.completion.chunk", "created": 1, "model": model}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason, **extra}
        return b"data: " + json.dumps({**head, "choices": [choice]}).encode() + b"\n\n"

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": p}) for p in text_pieces]
    for k, (call_id, name, pieces) in enumerate(calls):
        out.append(chunk({"tool_calls": [{"index": k, "id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": ""}}]}))
        out += [chunk({"tool_calls": [{"index": k, "function": {"arguments": p}}]}) for p in pieces]
    out.append(chunk({}, finish, stop_reason=stop_reason))
    if usage is not None:
        out.append(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
