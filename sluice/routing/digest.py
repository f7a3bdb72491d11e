"""What weights a backend says it serves: the digest of one model in a JSON answer of the backend.

Ollama lists its models with their digests at ``GET /api/tags``
(``{"models": [{"name": "llama3:latest", "model": "llama3:latest", "digest": "365c..."}]}``); an
OpenAI-compatible backend is read through a configured probe (``upstreams[].digest_probe``): a path on
its server and a field path into the answer (``data[id={model}].digest``). Which model's entry to read
is the registry version's ``upstream_model``; the digest is returned as the backend wrote it (routing.supply compares).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from ..core.config import DigestProbe

OLLAMA = DigestProbe(path="/api/tags", field="models[name={model}].digest")
_STEP = re.compile(r"([A-Za-z0-9_-]+)|\[([^\]\[]+)\]")


class DigestReader:
    """Reads one model's digest from a backend's answer, per ``digest_probe`` (``"ollama"`` or a probe)."""

    __slots__ = ("_path", "_steps", "_ollama")

    def __init__(self, probe: DigestProbe | str) -> None:
        self._ollama = probe == "ollama"
        spec = OLLAMA if isinstance(probe, str) else probe
        self._path = spec.path
        self._steps = [(key, sel) for key, sel in _STEP.findall(spec.field)]

    def path(self, model: str) -> str:
        """The path (from the server's root) to GET for ``model``'s digest."""
        return self._path.replace("{model}", model)

    def read(self, body: bytes, model: str) -> str | None:
        """``model``'s digest in ``body``; None when the answer holds none (not JSON, no such entry, not a string)."""
        try:
            node: Any = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return None
        for key, selector in self._steps:
            if key:
                node = node.get(key) if isinstance(node, dict) else None
            elif selector.isdigit():
                i = int(selector)
                node = node[i] if isinstance(node, list) and i < len(node) else None
            else:
                node = self._select(node, selector, model) if isinstance(node, list) else None
            if node is None:
                return None
        return node if isinstance(node, str) and node else None

    def _select(self, items: list, selector: str, model: str) -> Any:
        """The first item whose field equals the value (``name={model}``); Ollama's implicit ``:latest`` tag counts."""
        field, _, value = selector.partition("=")
        value = value.replace("{model}", model)
        names = (value, value + ":latest") if self._ollama and ":" not in value else (value,)
        for item in items:
            if isinstance(item, dict) and item.get(field) in names:
                return item
        return None
