"""Per-source and per-subject rate gates against credential abuse: token minting and failed
authentications. In memory, per replica, with a bounded number of tracked keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..core import clock
from ..core.errors import RateLimited, Unauthenticated

T = TypeVar("T")
A = TypeVar("A")

_MAX_KEYS = 65_536  # tracked sources/subjects per gate: a spray of addresses cannot grow memory without bound


class RateGate:
    """GCRA: ``per_minute`` events on average per key, up to ``per_minute`` at once (one minute of burst)."""

    __slots__ = ("_interval", "_burst", "_tat", "_what")

    def __init__(self, per_minute: int, what: str) -> None:
        self._interval = 60.0 / per_minute
        self._burst = 60.0 - self._interval  # a full minute's allowance may arrive at once
        self._tat: dict[str, float] = {}
        self._what = what

    def _wait(self, key: str) -> float:
        """Seconds until ``key`` is within its rate again (0 or less: it is now)."""
        tat = self._tat.get(key)
        return 0.0 if tat is None else tat - clock.monotonic() - self._burst

    def check(self, key: str) -> None:
        """Refuse with 429 and ``Retry-After`` while ``key`` is over its rate; consumes nothing."""
        wait = self._wait(key)
        if wait > 0:
            raise RateLimited(f"Too many {self._what}; retry after {wait:.0f} s.", retry_after=max(1.0, wait))

    def take(self, key: str) -> None:
        """One event for ``key`` if it is within its rate, else 429."""
        self.check(key)
        self.count(key)

    def allows(self, key: str) -> bool:
        """One event for ``key`` if it is within its rate (True); else False and nothing counted."""
        if self._wait(key) > 0:
            return False
        self.count(key)
        return True

    def count(self, key: str) -> None:
        """Count one event for ``key`` (a failure that already happened), without refusing it."""
        now = clock.monotonic()
        tat = self._tat.get(key, now)
        if len(self._tat) >= _MAX_KEYS and key not in self._tat:
            self._prune(now)
        self._tat[key] = max(tat, now) + self._interval

    def guard(self, source: str | None, authenticate: Callable[[A], T], arg: A) -> T:
        """Run a credential check for a source; a refusal (401) counts against the source, and once
        the source is over its failure rate, refusals are 429 with ``Retry-After``.

        A valid credential always passes: sources are often shared (a load balancer, a NAT), and
        one caller sending bad keys must not lock out the good callers behind the same address.
        """
        try:
            return authenticate(arg)
        except Unauthenticated:
            self.failed(source or "unknown")
            raise

    def failed(self, key: str) -> None:
        """One failed authentication from ``key``: 429 instead of the 401 once it is over its rate."""
        self.check(key)
        self.count(key)

    def _prune(self, now: float) -> None:
        live = {k: t for k, t in self._tat.items() if t > now}
        # still full of keys over their rate: forget the half that frees soonest
        if len(live) >= _MAX_KEYS:
            live = dict(sorted(live.items(), key=lambda kv: kv[1])[_MAX_KEYS // 2:])
        self._tat = live


def gate(per_minute: int, what: str) -> RateGate | None:
    """A gate, or None when the limit is 0 (switched off)."""
    return RateGate(per_minute, what) if per_minute > 0 else None
