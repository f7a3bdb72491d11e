"""Retention of the usage ledger (issue 29), run in the background by one replica at a time.

Each run, under the store's ``usage-retention`` lease (renewed as it goes; a holder that died is replaced when
its lease expires): on Postgres the default partition's rows move into their days' partitions and the next
``partitions_ahead`` days get theirs (``usage_partitions.py``); every whole UTC day older than
``raw_retention_days`` is exported to ``export_dir`` if one is set (``usage_export.py``) and then dropped: on
Postgres its partition whole, on SQLite its rows in batches of 5,000, one short transaction each with a pause
between, so the ledger's writer gets the file's write lock in between. A failed export drops nothing. Rollup
rows older than ``rollup_retention_days`` go in bounded batches on both stores.

Only rows that were exported are dropped: on SQLite the export and the deletes stop at the highest ``seq`` when
the day's run began (a late row comes after it and waits for the next run); on Postgres the partition is
dropped only if it still holds exactly the rows the export wrote.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from typing import Any

from sqlalchemy import delete, func, select

from ..core import clock
from ..core.config import Ledger
from . import rollups, usage_partitions
from . import schema as t
from .leases import Leases
from .usage_export import ExportFailed, day_text, export_apart, export_day, parse_day
from .usage_reads import day_of

log = logging.getLogger("sluice.usage")
DAY = 86_400
LEASE = "usage-retention"
LEASE_TTL = 120.0
DELETE_BATCH = 5_000  # SQLite: rows per DELETE statement
PAUSE = 0.005  # SQLite: seconds between deletes, for the ledger's writer
_WINDOWS = {"usage_minute": 3_600, "usage_hour": DAY, "usage_day": DAY}  # rollup buckets per DELETE (bounded rows)
_ROLLUPS = {"usage_minute": t.usage_minute, "usage_hour": t.usage_hour, "usage_day": t.usage_day}


class UsageRetention:
    """One store's retention: ``run`` is the periodic job (it does nothing unless it gets the lease)."""

    def __init__(self, store: Any, settings: Ledger, holder: str | None = None) -> None:
        self._store = store
        self._settings = settings
        self._leases = Leases(store)
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    async def run(self, now: float | None = None) -> dict | None:
        """One pass if this replica gets the lease: what it did (days exported and dropped), else None."""
        at = clock.now() if now is None else now
        if not await self._leases.acquire(LEASE, self.holder, LEASE_TTL, at):
            return None
        try:
            return await self._pass(at)
        finally:
            await self._leases.release(LEASE, self.holder)

    async def _renew(self) -> None:
        if not await self._leases.acquire(LEASE, self.holder, LEASE_TTL):
            raise LeaseLost("the usage retention lease went to another replica")

    async def _pass(self, at: float) -> dict:
        s, engine = self._settings, self._store.engine
        postgres = self._store.dialect == "postgresql"
        today = day_of(at)
        if postgres:
            await self.partitions(today)
        done: dict = {"exported": [], "dropped": []}
        expired = await self._expired(today - s.raw_retention_days)
        manifests: dict[int, dict] = {}
        if expired and s.export_dir is not None:
            try:
                written = await self._export(expired, None if postgres else await self._max_seq())
            except (OSError, ExportFailed) as exc:  # the rows of the days not written stay for the next run
                log.warning("usage export failed, the rows of days not exported are kept: %s", exc)
                written = getattr(exc, "done", [])
            manifests = {parse_day(m["day"]): m for m in written}
        for day in expired:
            manifest = manifests.get(day)
            if s.export_dir is not None and manifest is None:
                continue
            await self._renew()
            if postgres:
                if not await usage_partitions.drop(engine, day, manifest["rows"] if manifest else None):
                    log.info("usage of %s changed while exported; tried again on the next run", day_text(day))
                    continue
            else:
                await self._delete_rows(day, (manifest["max_seq"] or 0) if manifest else None)
            if manifest:
                done["exported"].append(manifest)
            done["dropped"].append(day_text(day))
        done["rollup_rows"] = await self._trim_rollups((today - s.rollup_retention_days) * DAY)
        return done

    async def _export(self, days: list[int], upto_seq: int | None) -> list[dict]:
        """In a child process (``usage_export.export_apart``), unless the store is in this process's memory."""
        url, out = self._store._url, self._settings.export_dir
        if url.endswith((":memory:", ":///")):
            return [await export_day(self._store.engine, day, out, upto_seq=upto_seq) for day in days]
        return await export_apart(url, days, out, upto_seq=upto_seq, renew=self._renew)

    async def partitions(self, today: int) -> None:
        """Postgres: move the default partition's rows into their days' partitions, and make the days ahead."""
        async with self._store.engine.connect() as conn:
            strays = await usage_partitions.stray_days(conn)
        for day in sorted(set(strays) | set(range(today, today + self._settings.partitions_ahead + 1))):
            await usage_partitions.make(self._store.engine, day)

    async def _expired(self, cutoff: int) -> list[int]:
        """The days before ``cutoff`` that hold raw rows."""
        if self._store.dialect == "postgresql":
            async with self._store.engine.connect() as conn:
                return [d for d in await usage_partitions.days(conn) if d < cutoff]
        out, u = [], t.usage.c
        after = None
        async with self._store.engine.connect() as conn:
            while True:  # one index probe per day that has rows
                q = select(func.min(u.ts)).where(u.ts < cutoff * DAY)
                first = (await conn.execute(q if after is None else q.where(u.ts >= after * DAY))).scalar()
                if first is None:
                    return out
                after = day_of(first) + 1
                out.append(after - 1)

    async def _max_seq(self) -> int:
        async with self._store.engine.connect() as conn:
            return int((await conn.execute(select(func.max(t.usage.c.seq)))).scalar() or 0)

    async def _delete_rows(self, day: int, upto_seq: int | None) -> int:
        """SQLite: ``day``'s rows (up to ``upto_seq``) in batches, each its own short write transaction."""
        u = t.usage.c
        where = [u.ts >= day * DAY, u.ts < (day + 1) * DAY] + ([u.seq <= upto_seq] if upto_seq is not None else [])
        batch = select(u.seq).where(*where).limit(DELETE_BATCH).scalar_subquery()
        gone = 0
        while True:
            async with self._store.engine.begin() as conn:
                n = (await conn.execute(delete(t.usage).where(u.seq.in_(batch)))).rowcount or 0
            gone += n
            if n < DELETE_BATCH:
                return gone
            await asyncio.sleep(PAUSE)

    async def _trim_rollups(self, before: int) -> int:
        """Rollup rows with buckets before ``before``, a window of buckets per statement (minutes: an hour's)."""
        gone = 0
        for name in rollups.TABLES.values():
            table, window = _ROLLUPS[name], _WINDOWS[name]
            b = table.c.bucket
            while True:
                async with self._store.engine.begin() as conn:
                    first = (await conn.execute(select(func.min(b)).where(b < before))).scalar()
                    if first is None:
                        break
                    lo = first - first % window
                    gone += (await conn.execute(delete(table).where(b >= lo, b < min(lo + window, before)))).rowcount or 0
                await asyncio.sleep(PAUSE)
        return gone


class LeaseLost(Exception):
    """Another replica holds the retention lease now (this one was too slow to renew it)."""
