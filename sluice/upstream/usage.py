"""Token usage: taken from the upstream's reply, or estimated when it reports none.

Completions are estimated here, at the documented rule of thumb of about four characters per
token; a prompt is estimated as the limits reserve it (``limits.estimate``), with the model's
tokenizer where it has one.
"""

from __future__ import annotations

import msgspec

from ..core.wire import TokenUsage, UsageEnvelope

_envelope = msgspec.json.Decoder(UsageEnvelope)


class _ContentMessage(msgspec.Struct):
    content: str | None = None


class _ContentChoice(msgspec.Struct):
    message: _ContentMessage | None = None
    text: str | None = None  # a legacy completion's choice


class _Contents(msgspec.Struct):
    choices: list[_ContentChoice] = []


_contents = msgspec.json.Decoder(_Contents)


def reported_usage(body: bytes) -> TokenUsage | None:
    """The ``usage`` object of a JSON reply, or None when absent or unreadable."""
    try:
        return _envelope.decode(body).usage
    except msgspec.DecodeError:
        return None


def completion_chars(body: bytes) -> int:
    """Characters of generated text in a non-streaming chat completion, or legacy completion."""
    try:
        choices = _contents.decode(body).choices
    except msgspec.DecodeError:
        return 0
    return sum(len(c.message.content or "") if c.message is not None else len(c.text or "") for c in choices)
