"""A deterministic stand-in tokenizer: words and single punctuation marks are tokens.

It is not any real model's tokenizer; it only needs to be stable, cheap and roughly
proportional to text length, so that usage counts, prefix caching and latency behave
the way they would against a real backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

_TOKEN = re.compile(r"\w+|[^\w\s]")

tokenize = _TOKEN.findall
"""Split text into tokens: runs of word characters, or single non-space symbols."""


def count(text: str) -> int:
    """Number of tokens in ``text``."""
    return len(_TOKEN.findall(text))


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
    """The prompt tokens of chat messages given as ``(role, content)``: role, then content, per message."""
    out: list[str] = []
    for role, content in messages:
        # The role is part of the prompt as a chat template renders it, so it counts and it caches.
        out.append(role)
        out.extend(_TOKEN.findall(content_text(content)))
    return out
