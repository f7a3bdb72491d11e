"""What a limiter decides on: checks against counters, what a request costs, the verdict.

A request's subject (who, which team, model, route) maps to a ``Plan`` of checks, one per
counter it touches. A request brings its ``amounts`` (one number per measure); the backend
admits it into every counter of the plan or into none, atomically.
"""

from __future__ import annotations

from typing import Literal

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


class Verdict(msgspec.Struct, gc=False):
    """Admitted or not; for every check what remains and how long until it is full again."""

    ok: bool
    failed: int  # index of the first check that did not fit, -1 when admitted
    remaining: list[float]
    # seconds until each check is full again; None when admitted by a backend that leaves the
    # buckets' resets to follow from what remains: (limit - remaining) / rate
    reset_s: list[float] | None
