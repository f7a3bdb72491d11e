"""The embedded backend: counters in this process. One event loop makes each call atomic.

This is the request path of the embedded default, so it is written for speed: a plan is
resolved once into the counter cells it touches (shared by key with every other plan) and
its compiled ``take``, ``give`` and ``admit`` (``compiled``); a request then only does that
arithmetic.
A sweep that forgets idle cells bumps a generation, and each plan resolves its cells again
on its next use.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping, Sequence

from .backend import LimitBackend
from .checks import Verdict
from .compiled import bound
from .plan import Plan


class _Bucket:
    """A token bucket's level at ``ts``."""

    __slots__ = ("level", "ts")

    def __init__(self, level: float, ts: float) -> None:
        self.level, self.ts = level, ts


class _Leases:
    """Live request ids and their deadlines; expired ones are dropped when they would block."""

    __slots__ = ("live",)

    def __init__(self) -> None:
        self.live: dict[str, float] = {}

    def expire(self, now: float) -> int:
        live = self.live
        for rid in [r for r, deadline in live.items() if deadline <= now]:
            del live[rid]
        return len(live)


class _Sum:
    """A sum over a calendar window that ends at ``ends``."""

    __slots__ = ("value", "ends")

    def __init__(self) -> None:
        self.value, self.ends = 0.0, 0.0


_CELL = {"bucket": None, "lease": _Leases, "counter": _Sum}
_TAKE, _GIVE, _ADMIT = 2, 3, 4  # where a plan's memo holds its compiled calls
# unique across backends, so a plan's memo from one backend (a fail-open fallback, say) is
# never taken for another's
_generations = itertools.count(1)
MAX_CHARGES = 200_000  # keys of work charged once however often it runs (batch lines) kept in memory


class MemoryBackend(LimitBackend):
    """Token buckets, lease sets and windowed sums in one dictionary of cells, swept lazily."""

    def __init__(self) -> None:
        self._cells: dict[str, _Bucket | _Leases | _Sum] = {}
        self.charges: dict[str, list[float]] = {}  # ``charge``: per key of work run more than once (a batch line)
        self._generation = next(_generations)
        self._ops = 0

    async def acquire(self, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> Verdict:
        return self.acquire_now(request_id, plan, amounts, ttl)

    def _compiled(self, plan: Plan) -> tuple:
        """(generation, cells, take, give, admit) of a plan, cached on it until the next sweep."""
        cells = self._cells
        out = []
        for c in plan.checks:
            cell = cells.get(c.key)
            if cell is None:
                cell = cells[c.key] = _Bucket(c.limit, 0.0) if c.kind == "bucket" else _CELL[c.kind]()  # type: ignore[misc]
            out.append(cell)
        plan.memo = (self._generation, tuple(out), *bound(plan.shape, plan.headers)(*out))
        return plan.memo  # type: ignore[no-any-return]

    def acquire_now(self, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> Verdict:
        """``acquire`` without a coroutine: nothing here waits, so the event loop makes it atomic.

        An admitted verdict carries no resets: for buckets they follow from what remains.
        """
        got = self._run(_TAKE, request_id, plan, amounts, ttl)
        return got if type(got) is Verdict else Verdict(True, -1, got, None)

    def admit_now(self, request_id: str, plan: Plan, amounts: Sequence[float],
                  ttl: Mapping[str, float]) -> dict[str, str] | Verdict:
        """``acquire_now`` for the request path: the ``x-ratelimit-*`` headers when admitted,
        the refusal's verdict otherwise."""
        return self._run(_ADMIT, request_id, plan, amounts, ttl)  # type: ignore[no-any-return]

    def _run(self, call: int, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> object:
        """One of the plan's compiled calls (``take`` or ``admit``); a refusal, which they
        answer with the failed check's index, comes back as its explained verdict."""
        now = time.time()
        self._ops += 1
        if self._ops % 10_000 == 0:
            self._sweep(now)
        memo = plan.memo
        if memo is None or memo[0] != self._generation:
            memo = self._compiled(plan)
        got = memo[call](request_id, amounts, now, ttl)
        if type(got) is int:
            return self._explain(plan, memo[1], got, amounts, ttl, now)
        return got

    def _explain(self, plan: Plan, cells: tuple, failed: int, amounts: Sequence[float],
                 ttl: Mapping[str, float], now: float) -> Verdict:
        """A refusal (nothing was taken): where every check stands, and when each frees up."""
        checks = plan.checks
        remaining: list[float] = []
        resets: list[float] = []
        for c, cell in zip(checks, cells):
            cost = amounts[c.measure]
            if c.kind == "bucket":
                level = min(c.limit, cell.level + (now - cell.ts) * c.rate)
                fits = level >= cost
                remaining.append(level - cost if fits else level)
                if c.rate <= 0:
                    resets.append(0.0 if fits else ttl["minute"])
                else:
                    resets.append((c.limit - level + cost) / c.rate if fits else (cost - level) / c.rate)
            elif c.kind == "lease":
                n = cell.expire(now)
                fits = n + 1 <= c.limit
                remaining.append(c.limit - n - 1 if fits else c.limit - n)
                resets.append(0.0 if fits or not cell.live else min(cell.live.values()) - now)
            else:
                value = cell.value if cell.ends > now else 0.0
                remaining.append(c.limit - value - cost if value + cost <= c.limit else c.limit - value)
                resets.append(ttl[c.window])
        return Verdict(ok=False, failed=failed, remaining=remaining, reset_s=resets)

    async def settle(self, request_id: str, plan: Plan, deltas: Sequence[float]) -> None:
        self.settle_now(request_id, plan, deltas)

    async def charged(self, key: str) -> list[float] | None:
        return self.charges.get(key)

    async def charge(self, key: str, amounts: Sequence[float]) -> None:
        self.charge_now(key, amounts)

    def charge_now(self, key: str, amounts: Sequence[float]) -> None:
        charges = self.charges
        charges.pop(key, None)
        charges[key] = list(amounts)
        if len(charges) > MAX_CHARGES:  # the oldest go first: a line is retried soon or not at all
            del charges[next(iter(charges))]

    def settle_now(self, request_id: str, plan: Plan, deltas: Sequence[float]) -> None:
        """``settle`` without a coroutine: nothing here waits, so the request path need not either."""
        memo = plan.memo
        if memo is None or memo[0] != self._generation:
            memo = self._compiled(plan)
        memo[_GIVE](request_id, deltas, time.time())

    def _sweep(self, now: float) -> None:
        """Forget full idle buckets, empty lease sets and finished windows, so memory stays flat."""
        def busy(cell: _Bucket | _Leases | _Sum) -> bool:
            if isinstance(cell, _Bucket):
                return cell.level < 0 or now - cell.ts < 600
            if isinstance(cell, _Leases):
                return cell.expire(now) > 0
            return cell.ends > now

        self._cells = {k: v for k, v in self._cells.items() if busy(v)}
        self._generation = next(_generations)
