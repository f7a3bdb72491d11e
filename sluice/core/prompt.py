"""What of a chat request reaches the model's context besides its messages' text.
(A legacy completion's context is its prompt and its suffix, nothing else.)

Tool and function definitions, response-format schemas, assistant tool calls and their
arguments, message names and refusals all go into the prompt the model reads; the limits'
reservation (``limits.estimate``) and the usage fallback (``upstream.usage``) count them
from here, so both count the same things. Image parts cost a fixed ``IMAGE_TOKENS`` each
(OpenAI's price of a 1024x1024 image at high detail); any other non-text part counts as
its JSON text.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET

from .wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, Message

IMAGE_TOKENS = 765
_IMAGE_CHARS = 4 * IMAGE_TOKENS  # estimate_tokens turns it back into IMAGE_TOKENS
_IMAGE_PARTS = frozenset({"image_url", "image"})
_encode = msgspec.json.encode


def _json(value: Any) -> str:
    return _encode(value).decode()


def part_text(part: dict[str, Any]) -> str | None:
    """The text a content part puts in the context; None for an image (``IMAGE_TOKENS``)."""
    text = part.get("text")
    if type(text) is str:
        return text
    if part.get("type") in _IMAGE_PARTS:
        return None
    return _json(part)


def message_extras(m: Message) -> list[str]:
    """A message's text besides its content: its name, tool calls (with arguments), refusal."""
    out = []
    if type(m.name) is str:
        out.append(m.name)
    if m.tool_calls is not UNSET:
        out.append(_json(m.tool_calls))
    if type(m.function_call) is dict:
        out.append(_json(m.function_call))
    if type(m.refusal) is str:
        out.append(m.refusal)
    return out


def request_extras(request: ChatCompletionRequest) -> list[str]:
    """The request's own fields that reach the context, as JSON text: tools, functions,
    the response format (its schema) and a forced tool choice."""
    return [_json(v) for v in (request.tools, request.functions, request.response_format, request.tool_choice)
            if v is not UNSET and type(v) is not str]


def estimate_tokens(chars: int) -> int:
    """About four characters per token, at least one for anything non-empty."""
    return (chars + 3) // 4


def completion_text(request: CompletionRequest) -> str:
    """A legacy completion's prompts as one text, token ids written as numbers (what placement hashes)."""
    return "\x1e".join(p if isinstance(p, str) else " ".join(map(str, p)) for p in request.prompts())


def prompt_chars(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> int:
    """Characters of what reaches the model's context (what this module counts), for estimating prompt
    tokens; an image as the characters of its fixed cost, a token id as four characters."""
    if isinstance(request, CompletionRequest):
        suffix = len(request.suffix) if isinstance(request.suffix, str) else 0
        return sum((len(p) if isinstance(p, str) else 4 * len(p)) + suffix for p in request.prompts())
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
