"""How many tokens a request may cost before it runs: the reservation.

Prompt tokens are counted with the model's real tokenizer where it is known (OpenAI
models, through the offline ``bpe-openai`` tables) and otherwise estimated at four
characters per token, plus four tokens of framing per message. Output is reserved at
``max_tokens`` (or ``max_completion_tokens``) times ``n``, or at the policy's cap.
"""

from __future__ import annotations

import functools
from typing import Any

from ..core.wire import ChatCompletionRequest, EmbeddingRequest

_PER_MESSAGE = 4


@functools.lru_cache(maxsize=64)
def _encoding(model: str) -> Any | None:
    try:
        import bpe_openai

        name = bpe_openai.encoding_name_for_model(model)  # cheap; loads nothing for unknown models
        return bpe_openai.get_encoding(name)
    except Exception:  # unknown model, or the tables are not installed: estimate instead
        return None


def warm(models: list[str]) -> None:
    """Load the tokenizers of these models now (start-up), not on some unlucky first request."""
    for m in models:
        _encoding(m)


def _texts(request: ChatCompletionRequest | EmbeddingRequest) -> list[str]:
    if isinstance(request, EmbeddingRequest):
        inp = request.input
        return [inp] if isinstance(inp, str) else [x for x in inp if isinstance(x, str)]
    out = []
    for m in request.messages:
        c = m.content
        if isinstance(c, str):
            out.append(c)
        elif isinstance(c, list):
            out += [p["text"] for p in c if isinstance(p.get("text"), str)]
    return out


def prompt_tokens(request: ChatCompletionRequest | EmbeddingRequest, tokenizer_model: str) -> int:
    """Prompt tokens of a request, counted or estimated."""
    texts = _texts(request)
    enc = _encoding(tokenizer_model)
    if enc is not None:
        n = sum(len(enc.encode(t)) for t in texts)
    else:
        n = sum((len(t) + 3) // 4 for t in texts)
    if isinstance(request, EmbeddingRequest):
        inp = request.input
        if isinstance(inp, list):
            n += sum(len(x) if isinstance(x, list) else 1 for x in inp if not isinstance(x, str))
        return n
    return n + _PER_MESSAGE * len(request.messages)


def output_tokens(request: ChatCompletionRequest | EmbeddingRequest, cap: int) -> int:
    """The most output a request may produce, as far as the reservation is concerned."""
    if isinstance(request, EmbeddingRequest):
        return 0
    asked = request.max_completion_tokens or request.max_tokens
    per_choice = min(asked, cap) if isinstance(asked, int) else cap
    n = request.n if isinstance(request.n, int) else 1
    return per_choice * n
