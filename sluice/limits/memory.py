"""The embedded backend: counters in this process. One event loop makes each call atomic."""

from __future__ import annotations

import time

from .backend import LimitBackend
from .checks import Check, Verdict, bucket_state


class MemoryBackend(LimitBackend):
    """Token buckets, lease sets and windowed counters in dictionaries, expired lazily."""

    def __init__(self) -> None:
        self._buckets: dict[str, list[float]] = {}  # key -> [level, ts]
        self._leases: dict[str, dict[str, float]] = {}  # key -> request id -> deadline
        self._counters: dict[str, list[float]] = {}  # key -> [value, expires_at]
        self._ops = 0

    async def acquire(self, request_id: str, checks: list[Check]) -> Verdict:
        return self.acquire_now(request_id, checks)

    def acquire_now(self, request_id: str, checks: list[Check]) -> Verdict:
        """One pass to decide, one to apply; nothing awaits, so the event loop makes it atomic."""
        now = time.time()
        self._ops += 1
        if self._ops % 10_000 == 0:
            self._sweep(now)
        buckets, counters = self._buckets, self._counters
        remaining: list[float] = []
        resets: list[float] = []
        levels: list[float] = []
        failed = -1
        for i, c in enumerate(checks):
            kind = c.kind
            if kind == "bucket":
                st = buckets.get(c.key)
                if st is None:
                    level = c.limit
                else:
                    level = st[0] + (now - st[1]) * c.rate
                    if level > c.limit:
                        level = c.limit
                levels.append(level)
                left = level - c.cost
                if left >= 0:
                    remaining.append(left)
                    resets.append((c.limit - left) / c.rate if c.rate > 0 else 0.0)
                else:
                    remaining.append(level)
                    resets.append(-left / c.rate if c.rate > 0 else c.ttl)
                    if failed < 0:
                        failed = i
            elif kind == "lease":
                live = self._live_leases(c.key, now)
                levels.append(0.0)
                if len(live) + 1 <= c.limit:
                    remaining.append(c.limit - len(live) - 1)
                    resets.append(0.0)
                else:
                    remaining.append(c.limit - len(live))
                    resets.append(min(live.values()) - now)
                    if failed < 0:
                        failed = i
            else:
                st = counters.get(c.key)
                value = st[0] if st is not None and st[1] > now else 0.0
                levels.append(value)
                resets.append(c.ttl)
                if value + c.cost <= c.limit:
                    remaining.append(c.limit - value - c.cost)
                else:
                    remaining.append(c.limit - value)
                    if failed < 0:
                        failed = i
        if failed >= 0:
            return Verdict(ok=False, failed=failed, remaining=remaining, reset_s=resets)
        for c, level in zip(checks, levels):
            kind = c.kind
            if kind == "bucket":
                buckets[c.key] = [level - c.cost, now]
            elif kind == "lease":
                self._leases.setdefault(c.key, {})[request_id] = now + c.ttl
            else:
                st = counters.get(c.key)
                if st is None or st[1] <= now:
                    counters[c.key] = [c.cost, now + c.ttl]
                else:
                    st[0] += c.cost
        return Verdict(ok=True, failed=-1, remaining=remaining, reset_s=resets)

    async def settle(self, request_id: str, checks: list[Check], deltas: list[float]) -> None:
        self.settle_now(request_id, checks, deltas)

    def settle_now(self, request_id: str, checks: list[Check], deltas: list[float]) -> None:
        """``settle`` without a coroutine: nothing here waits, so the request path need not either."""
        now = time.time()
        for c, d in zip(checks, deltas):
            if c.kind == "bucket":
                st = self._buckets.get(c.key)
                if st is not None:
                    level = bucket_state(st[0], st[1], c.limit, c.rate, now)
                    self._buckets[c.key] = [min(c.limit, level - d), now]
            elif c.kind == "lease":
                self._leases.get(c.key, {}).pop(request_id, None)
            else:
                st = self._counters.get(c.key)
                if st is not None and st[1] > now:
                    st[0] += d

    def _live_leases(self, key: str, now: float) -> dict[str, float]:
        live = self._leases.get(key)
        if live is None:
            return {}
        for rid in [r for r, deadline in live.items() if deadline <= now]:
            del live[rid]
        return live

    def _sweep(self, now: float) -> None:
        """Forget full buckets, empty lease sets and finished windows, so memory stays flat."""
        self._buckets = {k: v for k, v in self._buckets.items() if v[0] < 0 or now - v[1] < 600}
        self._leases = {k: v for k, v in self._leases.items() if self._live_leases(k, now)}
        self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
