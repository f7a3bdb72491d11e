"""Token usage: taken from the upstream's reply, or estimated when it reports none.

Completions are estimated here, at the documented rule of thumb of about four characters per
token; a prompt is estimated as the limits reserve it (``limits.estimate``), with the model's
tokenizer where it has one.
"""

from __future__ import annotations

import msgspec

from ..core.prompt import IMAGE_TOKENS, message_extras, part_text, request_extras
from ..core.wire import ChatCompletionRequest, EmbeddingRequest, TokenUsage, UsageEnvelope

_envelope = msgspec.json.Decoder(UsageEnvelope)
_IMAGE_CHARS = 4 * IMAGE_TOKENS  # estimate_tokens turns it back into IMAGE_TOKENS


class _ContentMessage(msgspec.Struct):
    content: str | None = None


class _ContentChoice(msgspec.Struct):
    message: _ContentMessage | None = None


class _Contents(msgspec.Struct):
    choices: list[_ContentChoice] = []


_contents = msgspec.json.Decoder(_Contents)


def estimate_tokens(chars: int) -> int:
    """About four characters per token, at least one for anything non-empty."""
    return (chars + 3) // 4


def reported_usage(body: bytes) -> TokenUsage | None:
    """The ``usage`` object of a JSON reply, or None when absent or unreadable."""
    try:
        return _envelope.decode(body).usage
    except msgspec.DecodeError:
        return None


def prompt_chars(request: ChatCompletionRequest | EmbeddingRequest) -> int:
    """Characters of what reaches the model's context (``core.prompt``), for estimating prompt
    tokens; an image as the characters of its fixed cost."""
    if isinstance(request, EmbeddingRequest):
        inp = request.input
        if isinstance(inp, str):
            return len(inp)
        return sum(len(x) if isinstance(x, str) else 4 * (len(x) if isinstance(x, list) else 1) for x in inp)
    total = 0
    for m in request.messages:
        c = m.content
        if isinstance(c, str):
            total += len(c)
        elif isinstance(c, list):
            for part in c:
                text = part_text(part)
                total += _IMAGE_CHARS if text is None else len(text)
        total += sum(len(text) for text in message_extras(m))
    return total + sum(len(text) for text in request_extras(request))


def completion_chars(body: bytes) -> int:
    """Characters of generated text in a non-streaming chat completion."""
    try:
        choices = _contents.decode(body).choices
    except msgspec.DecodeError:
        return 0
    return sum(len(c.message.content or "") for c in choices if c.message is not None)
