"""A subject's plan: the checks its requests touch, and what is derived from them once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .checks import Check
from .compiled import renderer


class Plan:
    """A subject's checks, in a fixed order, and what backends and headers derive from them once."""

    __slots__ = ("checks", "keys", "shape", "headers", "render", "memo", "packed")

    def __init__(self, checks: list[Check]) -> None:
        self.checks = tuple(checks)
        self.keys = [c.key for c in checks]
        # what compiled code depends on: plans of one shape share it (``compiled``)
        self.shape = tuple((c.kind, float(c.limit), float(c.rate), c.measure, c.window) for c in checks)
        # per x-ratelimit header family: its three header names, and the checks that feed it
        # as (index, limit, the limit as printed, rate)
        self.headers = tuple(
            ((f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}"),
             tuple((i, c.limit, str(int(c.limit)), c.rate) for i, c in enumerate(checks) if c.header == kind))
            for kind in ("requests", "tokens") if any(c.header == kind for c in checks))
        # the headers of an admitted request, from what remains per check
        self.render: Callable[[list[float]], dict[str, str]] = renderer(self.headers)
        self.memo: Any = None  # the memory backend's compiled form of the plan
        self.packed: bytes | None = None  # the Redis backend's packed form of it
