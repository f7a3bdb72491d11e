"""A model's own tokenizer: a ``tokenizer.json`` (Hugging Face ``tokenizers``) read from a local
file, once per process; nothing is ever downloaded.

A model's ``tokenizer:`` makes the gateway's prompt estimate (limit reservations, the usage of
a stream whose upstream reported none) count tokens instead of guessing four characters a
token. The chat template's own tokens are counted as the sim's template renders a message:
its role, then its content (``Tokenizer.framing``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

_ROLES_KEPT = 64  # roles are a handful; the framing cache stays bounded whatever a caller sends


class Tokenizer:
    """Counts text in a model's tokens; ``pieces`` gives the text of each token."""

    __slots__ = ("path", "_encode", "_framing")

    def __init__(self, path: str, tokenizer: Any) -> None:
        self.path = path
        self._encode = tokenizer.encode
        self._framing: dict[str, list[str]] = {}

    def count(self, text: str) -> int:
        """Tokens of ``text``, as the model reads it (no special tokens added)."""
        return len(self._encode(text, add_special_tokens=False)) if text else 0

    def pieces(self, text: str) -> list[str]:
        """The text of each token of ``text`` (an unknown word is its own text, not ``[UNK]``)."""
        if not text:
            return []
        return [text[a:b] for a, b in self._encode(text, add_special_tokens=False).offsets]

    def framing(self, role: str) -> list[str]:
        """The tokens the chat template adds around a message of ``role``: the role, rendered
        before the content (the sim's template; its count is what a message costs beyond its text)."""
        got = self._framing.get(role)
        if got is None:
            got = self.pieces(role)
            if len(self._framing) < _ROLES_KEPT:
                self._framing[role] = got
        return got


_loaded: dict[str, Tokenizer] = {}
_lock = threading.Lock()


def load(path: str) -> Tokenizer:
    """The tokenizer in ``path`` (a ``tokenizer.json``), read once per process.

    Raises ``ValueError`` saying why when the file is missing or is not a tokenizer.
    """
    key = os.path.abspath(path)
    with _lock:
        got = _loaded.get(key)
        if got is not None:
            return got
        if not os.path.isfile(key):
            raise ValueError(f"no tokenizer file at {path!r}")
        from tokenizers import Tokenizer as HfTokenizer  # only a model that names a tokenizer pays the import

        try:
            hf = HfTokenizer.from_file(key)
        except Exception as exc:  # a file that is not a tokenizer.json: name the file, not a trace
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ValueError(f"{path!r} is not a tokenizer.json ({reason})") from None
        got = _loaded[key] = Tokenizer(path, hf)
        return got
