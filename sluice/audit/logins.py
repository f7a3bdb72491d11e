"""Failed control-plane logins as audit entries, bounded so an attacker cannot flood the log.

Two bounds: the identity gate's per-source failure rate (a source over it gets 429, which is not
logged), then at most ``per_minute`` entries per replica per minute; failures over that are counted
and the count is written in the next entry (``suppressed``), so nothing is dropped silently.
"""

from __future__ import annotations

import logging
import uuid

from ..core import clock
from ..core.types import ChangeEvent

log = logging.getLogger("sluice.audit")


class FailedLogins:
    """Writes one audit entry per failed control-plane authentication, within a per-minute budget."""

    def __init__(self, store: object, per_minute: int) -> None:
        self._store = store
        self._per_minute = per_minute
        self._window = -1
        self._written = 0
        self._suppressed = 0

    async def record(self, source: str | None, path: str, code: str | None) -> None:
        window = int(clock.monotonic() // 60)
        if window != self._window:
            self._window, self._written = window, 0
        if self._written >= self._per_minute:
            self._suppressed += 1
            return
        self._written += 1
        suppressed, self._suppressed = self._suppressed, 0
        event = ChangeEvent(id=uuid.uuid4().hex, ts=clock.now(), actor="-", action="login.failed", target=path[:256],
                            source_ip=source, detail={"code": code, "suppressed": suppressed})
        try:
            await self._store.record_audit(event)  # type: ignore[attr-defined]
        except Exception as exc:  # the request is refused (401) either way; keep the count for the next entry
            self._suppressed += suppressed + 1
            log.error("a failed login could not be written to the audit log: %s", type(exc).__name__)
