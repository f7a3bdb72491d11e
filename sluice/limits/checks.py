"""What a limiter decides on: a subject's plan of checks, what a request costs, the verdict.

A request's subject (who, which team, model, route) maps to a ``Plan``: the counters it
touches, worked out once per subject. A request brings its ``amounts`` (one number per
measure); the backend admits it into every counter of the plan or into none, atomically.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Kind = Literal["bucket", "lease", "counter"]

# What a check counts: the index into a request's ``amounts`` and a settlement's ``deltas``.
REQUESTS, INPUT, OUTPUT, CONCURRENCY, SPEND = range(5)
MEASURES = ("requests", "input", "output", "concurrency", "spend")
# What a request may cost, one number per measure: (1 request, input tokens, output tokens,
# 1 concurrency slot, money). Settlement deltas have the same shape.
Amounts = tuple[float, float, float, float, float]


class Check(msgspec.Struct, frozen=True, gc=False):
    """One counter a subject's requests must fit into.

    ``bucket``: a token bucket of ``limit`` refilling at ``rate`` per second (per-minute limits);
    ``lease``: at most ``limit`` live request ids, each for the lease ttl (concurrency);
    ``counter``: a sum that may not pass ``limit`` in a calendar window (spend per day or month).
    ``window`` names where the ttl comes from: ``minute``, ``lease``, ``day`` or ``month``.
    """

    key: str
    kind: Kind
    limit: float
    rate: float
    window: str
    label: str
    measure: int
    header: Literal["requests", "tokens", ""] = ""


class Plan:
    """A subject's checks, in a fixed order, and what backends and headers derive from them once."""

    __slots__ = ("checks", "keys", "headers", "memo")

    def __init__(self, checks: list[Check]) -> None:
        self.checks = tuple(checks)
        self.keys = [c.key for c in checks]
        # per x-ratelimit header family: its three header names, and the checks that feed it
        # as (index, 1 / limit, the limit as printed, limit, rate)
        self.headers = tuple(
            (f"x-ratelimit-limit-{kind}", f"x-ratelimit-remaining-{kind}", f"x-ratelimit-reset-{kind}",
             tuple((i, 1.0 / c.limit, str(int(c.limit)), c.limit, c.rate) for i, c in enumerate(checks) if c.header == kind))
            for kind in ("requests", "tokens") if any(c.header == kind for c in checks))
        self.memo: Any = None  # a backend's own compiled form of the plan


class Verdict(msgspec.Struct, gc=False):
    """Admitted or not; for every check what remains and how long until it is full again."""

    ok: bool
    failed: int  # index of the first check that did not fit, -1 when admitted
    remaining: list[float]
    # seconds until each check is full again; None when admitted by a backend that leaves the
    # buckets' resets to follow from what remains: (limit - remaining) / rate
    reset_s: list[float] | None
