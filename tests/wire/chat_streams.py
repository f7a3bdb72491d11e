"""Chat completions built for tests: a whole reply and the SSE stream an OpenAI-compatible
upstream (vLLM's way) sends for the same reply, its text and arguments in the given pieces."""

from __future__ import annotations

import json
from typing import Any

Call = tuple[str, str, list[str]]  # id, name, argument pieces


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
