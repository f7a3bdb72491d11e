"""The sim's tokenizer: words and single punctuation marks are tokens, whitespace is none.

It is not any real model's tokenizer; it only needs to be stable, cheap and roughly
proportional to text length, so that usage counts, prefix caching and latency behave the
way they would against a real backend. It ships as ``tokenizer.json`` (Hugging Face
``tokenizers``, built by ``build_tokenizer``), so a gateway that names that file as a
model's ``tokenizer:`` counts prompts exactly as the sim does. Every word the sim generates
is one token of it, so a completion's tokens are its words.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sluice.core.tokenizer import Tokenizer, load

TOKENIZER_PATH = str(Path(__file__).with_name("tokenizer.json"))
TOKENIZER: Tokenizer = load(TOKENIZER_PATH)

tokenize = TOKENIZER.pieces
"""Split text into tokens (their text): runs of word characters, or single non-space symbols."""

count = TOKENIZER.count
"""Number of tokens in a text."""


def content_text(content: str | Sequence[Any] | None) -> str:
    """The text of a message's content: a string, or the ``text`` of its list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content:
        if isinstance(part, dict):
            text = part.get("text")
            if isinstance(text, str):
                parts.append(text)
    return " ".join(parts)


def message_tokens(messages: Iterable[tuple[str, str | Sequence[Any] | None]]) -> list[str]:
    """The prompt tokens of chat messages given as ``(role, content)``, as the chat template renders
    them: per message its framing (the role: part of the prompt, so it counts and it caches), then
    its content."""
    out: list[str] = []
    for role, content in messages:
        out.extend(TOKENIZER.framing(role))
        out.extend(TOKENIZER.pieces(content_text(content)))
    return out
