"""A whole chat completion encoded as an Anthropic message, and the mappings the stream encoder shares.

| chat completions                                   | Messages                                     |
|----------------------------------------------------|----------------------------------------------|
| ``id`` ``chatcmpl-X``                              | ``id`` ``msg_X``                             |
| message ``content``                                | a ``text`` block (none when empty)           |
| ``tool_calls``                                     | ``tool_use`` blocks; ``input``: the parsed arguments (a JSON object; ``""`` is ``{}``) |
| ``finish_reason`` stop / length / tool_calls       | ``stop_reason`` end_turn / max_tokens / tool_use |
| stop with vLLM's ``stop_reason`` a string          | ``stop_sequence``, with ``stop_sequence`` that string |
| ``content_filter``                                 | ``refusal``                                  |
| ``prompt_tokens`` - cache reads - cache writes     | ``usage.input_tokens`` (Anthropic's excludes both) |
| ``prompt_tokens_details.cached_tokens``            | ``usage.cache_read_input_tokens``            |
| ``prompt_tokens_details.cache_creation_tokens``    | ``usage.cache_creation_input_tokens`` (an Anthropic upstream's, see ``native``) |
| ``completion_tokens``                              | ``usage.output_tokens``                      |

Only the first choice is encoded (Messages has no ``n``). Reasoning text (``reasoning_content``)
is not encoded: a thinking block needs Anthropic's signature.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from sluice.core.errors import UpstreamError

from ..chat import Choice, Completion, Usage, completion_decoder

STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
_ID_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_args_decoder = msgspec.json.Decoder(dict[str, Any])


def message_id(chat_id: str) -> str:
    """``msg_`` and the upstream's id without its ``chatcmpl-`` prefix (the same id whole or streamed); an
    Anthropic upstream's ``msg_`` id stays as it is."""
    rest = chat_id.removeprefix("chatcmpl-").removeprefix("msg_")
    if not (rest.isascii() and rest.replace("-", "a").replace("_", "a").isalnum()):  # the usual id skips the regex
        rest = _ID_SAFE.sub("", rest)
    return "msg_" + (rest or "sluice")


def tool_id(k: int) -> str:
    """The id of the ``k``-th tool call of a reply whose upstream gave it none."""
    return f"toolu_{k}"


def stop_reason(finish_reason: str | None, vllm_stop: str | int | None) -> tuple[str, str | None]:
    """(``stop_reason``, ``stop_sequence``) of a chat finish."""
    if finish_reason == "stop" and isinstance(vllm_stop, str) and vllm_stop:
        return "stop_sequence", vllm_stop
    return STOP_REASONS.get(finish_reason or "stop", "end_turn"), None


def usage(u: Usage | None) -> dict[str, int]:
    """Anthropic's usage of a chat usage (zeros when the upstream reported none)."""
    if u is None:
        return {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    details = u.prompt_tokens_details
    cached = (details.cached_tokens or 0) if details is not None else 0
    created = (details.cache_creation_tokens or 0) if details is not None else 0
    return {"input_tokens": max(u.prompt_tokens - cached - created, 0), "output_tokens": u.completion_tokens,
            "cache_creation_input_tokens": created, "cache_read_input_tokens": cached}


def tool_input(arguments: str | None) -> dict[str, Any]:
    """A tool call's arguments as ``input``: a JSON object, ``{}`` for none; anything else is the upstream's fault."""
    if not arguments:
        return {}
    try:
        return _args_decoder.decode(arguments)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError("The upstream returned tool arguments that are not a JSON object.") from None


def encode_message(reply: bytes | Completion) -> dict[str, Any]:
    """The Anthropic message of a whole chat completion (its JSON, or decoded)."""
    completion = completion_decoder.decode(reply) if isinstance(reply, bytes | bytearray | memoryview) else reply
    if not completion.choices:
        raise UpstreamError("The upstream returned a completion without choices.")
    choice: Choice = completion.choices[0]
    msg = choice.message
    content: list[dict[str, Any]] = []
    if msg is not None and msg.content:
        content.append({"type": "text", "text": msg.content})
    for k, call in enumerate((msg.tool_calls or ()) if msg is not None else ()):
        fn = call.function
        content.append({"type": "tool_use", "id": call.id or tool_id(k), "name": (fn.name if fn else None) or "",
                        "input": tool_input(fn.arguments if fn else None)})
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_reason)
    return {"id": message_id(completion.id), "type": "message", "role": "assistant", "model": completion.model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence, "usage": usage(completion.usage)}


def encode_message_bytes(reply: bytes | Completion) -> bytes:
    """``encode_message``, as the JSON body to send."""
    return msgspec.json.encode(encode_message(reply))
