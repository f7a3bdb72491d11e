"""What a limiter decides on: checks against counters, and the verdict.

A request becomes a list of checks, one per counter it touches; the backend admits all of
them or none, atomically.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Kind = Literal["bucket", "lease", "counter"]


class Check(msgspec.Struct, frozen=True, gc=False):
    """One counter a request must fit into.

    ``bucket``: a token bucket of ``limit`` refilling at ``rate`` per second (per-minute limits);
    ``lease``: at most ``limit`` live request ids, each for ``ttl`` seconds (concurrency);
    ``counter``: a sum that may not pass ``limit`` in a calendar window ending in ``ttl`` seconds (spend).
    """

    key: str
    kind: Kind
    limit: float
    rate: float
    cost: float
    ttl: float
    label: str
    measure: Literal["requests", "input", "output", "concurrency", "spend"]
    header: Literal["requests", "tokens", ""] = ""


class Verdict(msgspec.Struct, gc=False):
    """Admitted or not; for every check what remains and how long until it is full again."""

    ok: bool
    failed: int  # index of the first check that did not fit, -1 when admitted
    remaining: list[float]
    reset_s: list[float]


def bucket_state(level: float, ts: float, limit: float, rate: float, now: float) -> float:
    """A token bucket's level after refilling from ``ts`` to ``now``."""
    return min(limit, level + max(0.0, now - ts) * rate)


def bucket_reset(level: float, limit: float, rate: float) -> float:
    return (limit - level) / rate if rate > 0 and level < limit else 0.0
