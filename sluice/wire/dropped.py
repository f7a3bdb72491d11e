"""The features dropped from one request, by name: what a client API's request may carry that the
upstream it goes to cannot take is dropped by a rule its adapter names (``DROP_RULES`` in
``anthropic.dropped`` and ``responses.dropped``) and reported, never dropped silently."""

from __future__ import annotations

from collections.abc import Mapping


class Dropped:
    """The features dropped from one request, each once, in the order first met; every name one of ``rules``."""

    __slots__ = ("names", "_rules")

    def __init__(self, rules: Mapping[str, str]) -> None:
        self._rules = rules
        self.names: list[str] = []

    def add(self, name: str) -> None:
        assert name in self._rules, name
        if name not in self.names:
            self.names.append(name)
