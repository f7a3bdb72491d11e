"""Keeps a replica's credential registry current with the store it shares with other replicas.

Every identity, key, role or team change bumps an identity-state version in the same
transaction. On Postgres a NOTIFY after commit wakes every replica at once; every replica also
reads the version every ``poll_interval_s`` (one primary-key read), so a missed message, or
SQLite, still catches up. A changed version patches the registry with what changed since the
version it holds (reloaded whole when the store cannot say exactly what that was: the first
load, history pruned). Requests never wait on any of this: they read whatever registry is installed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..core import clock
from ..core.config import IdentitySettings
from ..core.lifecycle import stop_task
from ..store import Store, Subscription

log = logging.getLogger("sluice.identity")


class IdentitySync:
    """The background task that reloads the registry when the identity-state version moves."""

    def __init__(self, store: Store, reload: Callable[[int], Awaitable[bool]], cfg: IdentitySettings) -> None:
        self._store = store
        self._reload = reload
        self._cfg = cfg
        self._version: int | None = None
        self._confirmed = clock.monotonic()
        self._wake = asyncio.Event()
        self._sub: Subscription | None = None
        self._can_push = True
        self._task: asyncio.Task | None = None
        self._failing = False
        self._reloading = False
        self.reloads = 0

    async def start(self) -> None:
        """Load once now (start-up fails loudly if the store cannot be read), then follow changes."""
        await self._catch_up()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="identity-sync")

    async def stop(self) -> None:
        """End the task and the subscription."""
        await stop_task(self._task)
        if self._sub is not None:
            await self._sub.close()

    @property
    def stale_for(self) -> float:
        """Seconds since this replica last confirmed its registry matches the store; during a reload, since it
        last read a page of it (a whole reload of 100,000 identities outlasts ``max_staleness_s`` on a busy
        machine, and is progressing, not stale, while its pages keep coming)."""
        now = clock.monotonic()
        return now - max(self._confirmed, self._store.paged_at) if self._reloading else now - self._confirmed

    @property
    def current(self) -> bool:
        """Confirmed within ``max_staleness_s``: otherwise /readyz says not ready."""
        return self.stale_for <= self._cfg.max_staleness_s

    async def _catch_up(self) -> None:
        # the version is read before the data: a change landing in between reloads once more next time
        version = await self._store.identity_version()
        if version != self._version:
            self._reloading = True
            try:
                loaded = await self._reload(version)
            finally:
                self._reloading = False
            if not loaded:
                self._wake.set()  # this process changed the registry meanwhile: read again at once
                return
            self._version = version
            self.reloads += 1
        self._confirmed = clock.monotonic()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._cfg.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._listen()
            except Exception as exc:  # no push: polling alone still keeps the registry current
                log.warning("cannot listen for identity changes, polling only: %s", type(exc).__name__)
            try:
                await self._catch_up()
                if self._failing:
                    log.info("identity state is current again")
                self._failing = False
            except Exception as exc:  # keep serving the registry we have; /readyz reports the staleness
                if not self._failing:
                    log.warning("cannot confirm the identity state is current: %s", type(exc).__name__)
                self._failing = True

    async def _listen(self) -> None:
        if not self._can_push or (self._sub is not None and self._sub.alive()):
            return
        if self._sub is not None:
            await self._sub.close()
            self._sub = None
        self._sub = await self._store.subscribe(self._wake.set)
        self._can_push = self._sub is not None
