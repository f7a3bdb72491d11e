"""The processes' health endpoints: liveness (``/healthz``, and ``/health`` as vLLM serves it) and readiness
(``/readyz``), read off the gateway's parts."""

from __future__ import annotations

import asyncio
from typing import Any

from .core.exchange import Exchange, Reply
from .store import StoreUnavailable


class Probes:
    """``/healthz`` and ``/readyz`` of one gateway (its store, limiter, identity sync, ledger and drain state)."""

    def __init__(self, gw: Any) -> None:
        self._gw = gw
        self._ready_cache: tuple[float, bool, tuple[bool, str | None]] = (0.0, False, (True, None))

    async def healthz(self, _: Exchange) -> Reply:
        return Reply.json({"status": "ok"})

    async def readyz(self, _: Exchange) -> Reply:
        """Ready when the store answers within a second, usage is being written, the credential
        registry was confirmed current within ``identity.max_staleness_s``, and the limits
        backend answers or its failure mode still serves calls; the body names what is wrong."""
        loop = asyncio.get_running_loop()
        at, store_ok, limits = self._ready_cache
        if loop.time() - at > 1.0:
            # at once and each bounded, so a probe never waits much over a second
            store_ok, limits = await asyncio.gather(self._store_answers(), self._gw.limiter.readiness(1.0))  # type: ignore[union-attr]
            self._ready_cache = (loop.time(), store_ok, limits)
        limits_ok, limits_problem = limits
        current = self._gw.identity_sync is not None and self._gw.identity_sync.current
        writing = self._gw.ledger is not None and self._gw.ledger.healthy
        ok = store_ok and limits_ok and writing and current and not self._gw.draining
        wrong = {"draining: shutting down": self._gw.draining, "store unavailable": not store_ok,
                 "identity state not confirmed current": not current, "usage records are not being written": not writing}
        reasons = [why for why, bad in wrong.items() if bad] + ([limits_problem] if limits_problem else [])
        body = {"status": ("degraded" if reasons else "ready") if ok else "draining" if self._gw.draining else "not ready",
                "store": "ok" if store_ok else "unavailable", "identity": "current" if current else "stale",
                "limits": "ok" if limits_problem is None else "unavailable",
                "usage_spilled": self._gw.ledger.spilled if self._gw.ledger is not None else 0}
        if reasons:
            body["reasons"] = reasons
        return Reply.json(body, status=200 if ok else 503, headers=None if ok else {"Retry-After": "1"})

    async def _store_answers(self) -> bool:
        try:
            await asyncio.wait_for(self._gw.store.ping(), 1.0)  # type: ignore[union-attr]
            return True
        except (StoreUnavailable, asyncio.TimeoutError):
            return False
