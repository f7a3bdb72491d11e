"""The embedded backend: counters in this process. One event loop makes each call atomic.

This is the request path of the embedded default, so it is written for speed: a plan is
resolved once into the counter cells it touches (shared by key with every other plan), and
a request then only does arithmetic on those cells. A sweep that forgets idle cells bumps a
generation, and each plan resolves its cells again on its next use.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from .backend import LimitBackend
from .checks import Plan, Verdict


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


class MemoryBackend(LimitBackend):
    """Token buckets, lease sets and windowed sums in one dictionary of cells, swept lazily."""

    def __init__(self) -> None:
        self._cells: dict[str, _Bucket | _Leases | _Sum] = {}
        self._generation = 0
        self._ops = 0

    async def acquire(self, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> Verdict:
        return self.acquire_now(request_id, plan, amounts, ttl)

    def _rows(self, plan: Plan) -> tuple:
        """The plan as flat rows (kind, cell, limit, rate, measure, window), cached on the plan."""
        memo = plan.memo
        if memo is not None and memo[0] == self._generation:
            return memo[1]
        cells = self._cells
        rows = []
        for c in plan.checks:
            cell = cells.get(c.key)
            if cell is None:
                cell = cells[c.key] = _Bucket(c.limit, 0.0) if c.kind == "bucket" else _CELL[c.kind]()  # type: ignore[misc]
            rows.append((c.kind, cell, c.limit, c.rate, c.measure, c.window))
        plan.memo = (self._generation, tuple(rows))
        return plan.memo[1]

    def acquire_now(self, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> Verdict:
        """Take every check in one pass; a check that does not fit rolls back the ones before it.

        Nothing here awaits, so the event loop makes it atomic. An admitted verdict carries no
        resets: for the buckets that feed the headers they follow from what remains.
        """
        now = time.time()
        self._ops += 1
        if self._ops % 10_000 == 0:
            self._sweep(now)
        remaining: list[float] = []
        i = 0
        for kind, cell, limit, rate, measure, window in self._rows(plan):
            if kind == "bucket":
                level = cell.level + (now - cell.ts) * rate
                left = (level if level < limit else limit) - amounts[measure]
                if left < 0:
                    return self._refuse(request_id, plan, i, amounts, ttl, now)
                cell.level = left
                cell.ts = now
                remaining.append(left)
            elif kind == "lease":
                live = cell.live
                if len(live) >= limit and cell.expire(now) >= limit:
                    return self._refuse(request_id, plan, i, amounts, ttl, now)
                live[request_id] = now + ttl["lease"]
                remaining.append(limit - len(live))
            else:
                if cell.ends > now:
                    value = cell.value + amounts[measure]
                    if value > limit:
                        return self._refuse(request_id, plan, i, amounts, ttl, now)
                    cell.value = value
                else:
                    value = amounts[measure]
                    if value > limit:
                        return self._refuse(request_id, plan, i, amounts, ttl, now)
                    cell.value, cell.ends = value, now + ttl[window]
                remaining.append(limit - value)
            i += 1
        return Verdict(True, -1, remaining, None)

    def _refuse(self, request_id: str, plan: Plan, failed: int, amounts: Sequence[float],
                ttl: Mapping[str, float], now: float) -> Verdict:
        """Give back what the checks before ``failed`` took, then say where every check stands."""
        checks = plan.checks
        cells = [row[1] for row in self._rows(plan)]
        for i in range(failed):
            c, cell = checks[i], cells[i]
            if c.kind == "bucket":
                cell.level += amounts[c.measure]
            elif c.kind == "lease":
                cell.live.pop(request_id, None)
            else:
                cell.value -= amounts[c.measure]
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

    def settle_now(self, request_id: str, plan: Plan, deltas: Sequence[float]) -> None:
        """``settle`` without a coroutine: nothing here waits, so the request path need not either."""
        now = time.time()
        for kind, cell, limit, rate, measure, _ in self._rows(plan):
            if kind == "lease":
                cell.live.pop(request_id, None)
                continue
            d = deltas[measure]
            if not d:
                continue
            if kind == "bucket":
                level = cell.level + (now - cell.ts) * rate
                level = (level if level < limit else limit) - d
                cell.level = level if level < limit else limit
                cell.ts = now
            elif cell.ends > now:
                cell.value += d

    def _sweep(self, now: float) -> None:
        """Forget full idle buckets, empty lease sets and finished windows, so memory stays flat."""
        def busy(cell: _Bucket | _Leases | _Sum) -> bool:
            if isinstance(cell, _Bucket):
                return cell.level < 0 or now - cell.ts < 600
            if isinstance(cell, _Leases):
                return cell.expire(now) > 0
            return cell.ends > now

        self._cells = {k: v for k, v in self._cells.items() if busy(v)}
        self._generation += 1
