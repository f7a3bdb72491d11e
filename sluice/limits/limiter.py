"""The limiter: reserve before the call, settle after it, answer like OpenAI when it is full.

A failing backend is a configured choice: fail closed (503, clear error) or fail open onto
a local limiter; either way it is counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

from ..core.config import LimitRule, Limits
from ..core.errors import RateLimited, Unavailable
from .anomaly import AnomalyGuard
from .backend import BackendUnavailable, LimitBackend
from .checks import Check, Verdict
from .memory import MemoryBackend
from .rules import Cost, RuleSet, Subject

log = logging.getLogger("sluice.limits")

Event = Callable[[str, str], None]  # (kind, label): "rejected" / "backend_down" / "settle_failed"


def _fmt(seconds: float) -> str:
    return f"{max(0.0, seconds):.3f}s"


class Reservation:
    """What one request holds until it settles."""

    __slots__ = ("request_id", "checks", "cost", "backend")

    def __init__(self, request_id: str, checks: list[Check], cost: Cost, backend: LimitBackend) -> None:
        self.request_id, self.checks, self.cost, self.backend = request_id, checks, cost, backend


def rate_headers(checks: list[Check], v: Verdict) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers from the tightest request check and the tightest token check."""
    best: dict[str, tuple[float, int]] = {}
    for i, c in enumerate(checks):
        h = c.header
        if h:
            share = v.remaining[i] / c.limit
            if h not in best or share < best[h][0]:
                best[h] = (share, i)
    out: dict[str, str] = {}
    for kind, (_, i) in best.items():
        out[f"x-ratelimit-limit-{kind}"] = str(int(checks[i].limit))
        rem = v.remaining[i]
        out[f"x-ratelimit-remaining-{kind}"] = str(int(rem)) if rem > 0 else "0"
        out[f"x-ratelimit-reset-{kind}"] = _fmt(v.reset_s[i])
    return out


class Limiter:
    """Rules plus a backend (and, failing open, a local fallback)."""

    def __init__(self, cfg: Limits, backend: LimitBackend, on_event: Event | None = None,
                 anomaly: AnomalyGuard | None = None) -> None:
        self._cfg = cfg
        self.anomaly = anomaly
        self.rules = RuleSet(cfg.rules, cfg.key_prefix, cfg.concurrency_lease_s)
        self._backend = backend
        self._fallback = MemoryBackend() if cfg.on_backend_failure == "open" else None
        # the in-process backend is called directly: no coroutine, no task, per request
        self._memory = backend if isinstance(backend, MemoryBackend) else None
        self._on_event = on_event or (lambda kind, label: None)
        self._pending: set[asyncio.Task] = set()
        self._down = False

    @property
    def active(self) -> bool:
        return bool(self.rules) or self.anomaly is not None

    def replace_rules(self, rules: list[LimitRule]) -> None:
        """New rules from the next request on; counters of unchanged rules carry over (same keys)."""
        self.rules = RuleSet(rules, self._cfg.key_prefix, self._cfg.concurrency_lease_s)

    async def reserve(self, request_id: str, subject: Subject, cost: Cost) -> tuple[Reservation | None, dict[str, str]]:
        """Take the request's reservation in every counter it touches, or refuse it with 429."""
        held = self.anomaly is not None and self.anomaly.throttled(subject.identity)
        checks = self.rules.checks(subject, cost, self._cfg.anomaly.safe_requests_per_minute if held else None)  # type: ignore[union-attr]
        if not checks:
            return None, {}
        backend = self._backend
        try:
            if backend is self._memory:
                verdict = backend.acquire_now(request_id, checks)  # type: ignore[union-attr]
            else:
                verdict = await backend.acquire(request_id, checks)
            if self._down:
                self._down = False
                log.warning("limit backend reachable again")
        except BackendUnavailable as exc:
            self._on_event("backend_down", str(exc))
            if not self._down:
                log.error("limit backend unreachable (%s): failing %s", exc, self._cfg.on_backend_failure)
                self._down = True
            if self._fallback is None:
                raise Unavailable("Usage limits cannot be checked right now; retry shortly.",
                                  code="limiter_unavailable", retry_after=1.0) from None
            backend = self._fallback
            verdict = await backend.acquire(request_id, checks)
        headers = rate_headers(checks, verdict)
        if not verdict.ok:
            hit = checks[verdict.failed]
            self._on_event("rejected", hit.label.split(" (", 1)[0])
            retry = max(verdict.reset_s[verdict.failed], 0.001)
            headers["retry-after-ms"] = str(int(math.ceil(retry * 1000)))
            exc = RateLimited(f"Rate limit reached for {hit.label}: limit {hit.limit:g}, "
                              f"remaining {max(0.0, verdict.remaining[verdict.failed]):g}, "
                              f"this request needs {hit.cost:g}. Retry after {retry:.2f}s.",
                              code="rate_limit_exceeded", retry_after=retry)
            exc.headers = headers
            raise exc
        return Reservation(request_id, checks, cost, backend), headers

    def observe(self, identity: str, tokens: float) -> None:
        """Feed the anomaly guard what an identity was served."""
        if self.anomaly is not None:
            self.anomaly.observe(identity, tokens)

    def settle(self, reservation: Reservation, actual: Cost) -> None:
        """Return the difference between reserved and used: at once in memory, off the request path on Redis."""
        used = {"input": actual.input - reservation.cost.input, "output": actual.output - reservation.cost.output,
                "spend": actual.spend - reservation.cost.spend}
        deltas = [used.get(c.measure, 0.0) for c in reservation.checks]
        if isinstance(reservation.backend, MemoryBackend):
            reservation.backend.settle_now(reservation.request_id, reservation.checks, deltas)
            return
        task = asyncio.get_running_loop().create_task(self._settle(reservation, deltas))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _settle(self, r: Reservation, deltas: list[float]) -> None:
        try:
            await r.backend.settle(r.request_id, r.checks, deltas)
        except BackendUnavailable as exc:
            self._on_event("settle_failed", str(exc))
            log.warning("could not settle a reservation (%s); leases expire on their own", exc)

    async def drain(self) -> None:
        """Wait for settlements in flight (shutdown)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        await self._backend.close()
