"""The purge of batch files, run in the background by one replica at a time (the store's ``batch-files-purge``
lease, as usage retention holds its own): files past their ``expires_at`` go, rows and chunks, in bounded
transactions; so do the chunks of uploads a replica began and never finished (it died mid-upload)."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket

from ..core import clock
from ..store.leases import Leases
from .records import BatchRecords

log = logging.getLogger("sluice.batches")
LEASE = "batch-files-purge"
LEASE_TTL = 120.0
ABANDONED_S = 86_400.0  # an upload begun this long ago that is still not a file never will be
PAUSE = 0.005  # between bounded deletes, for the store's other writers


class FilePurge:
    """``run``: one pass if this replica gets the lease; how many files went."""

    def __init__(self, records: BatchRecords) -> None:
        self._records = records
        self._leases = Leases(records._store)  # type: ignore[arg-type]
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    async def run(self) -> int | None:
        now = clock.now()
        if not await self._leases.acquire(LEASE, self.holder, LEASE_TTL, now):
            return None
        gone = 0
        try:
            while n := await self._records.purge_expired(now):
                gone += n
                await asyncio.sleep(PAUSE)
            await self._records.purge_abandoned(now - ABANDONED_S)
        finally:
            await self._leases.release(LEASE, self.holder)
        if gone:
            log.info("batch files: %d expired files purged", gone)
        return gone
