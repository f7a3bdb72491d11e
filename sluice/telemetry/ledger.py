"""The usage ledger writer: requests append a record; a background task folds records into
metrics and writes them to the store in batches, retrying while the store is down and
flushing everything on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from ..core.config import Usage
from ..core.lifecycle import stop_task
from ..core.types import UsageRecord
from .metrics import Metrics
from .spill import SpillFile

log = logging.getLogger("sluice.usage")
_SLICE = 256

WriteUsage = Callable[[list[UsageRecord]], Awaitable[None]]
TouchKeys = Callable[[dict[str, float]], Awaitable[None]]
TakeLastUsed = Callable[[], dict[str, float]]


class UsageLedger:
    """Bounded queue of usage records, drained off the request path."""

    def __init__(self, cfg: Usage, metrics: Metrics, write: WriteUsage, touch: TouchKeys, take_last_used: TakeLastUsed,
                 fold: Callable[[list[UsageRecord]], None] | None = None,
                 spill: SpillFile | None = None, spill_after: int = 50_000, batch_size: int = 500) -> None:
        self._cfg = cfg
        self._batch = batch_size  # records per write (``config.usage_batch``: by the store, unless configured)
        self._metrics = metrics
        self._fold = fold or metrics.observe  # price, observe, log (telemetry/fold.py)
        self._write = write
        self._touch = touch
        self._take_last_used = take_last_used
        self._unobserved: list[UsageRecord] = []
        self._unwritten: list[UsageRecord] = []
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.healthy = True
        self._spill = spill  # where records go past ``spill_after`` while the store is down
        self._spill_after = spill_after
        # request id -> who wants that request's record as it is made (a batch line keeps it with its result);
        # a tap that answers False keeps the record from the ledger (a batch line's run cut by a shutdown)
        self.taps: dict[str, Callable[[UsageRecord], bool | None]] = {}

    def record(self, rec: UsageRecord) -> None:
        """Called once per request; costs one list append (and a test of an empty dict)."""
        if self.taps:
            tap = self.taps.pop(rec.request_id, None)
            if tap is not None and tap(rec) is False:
                return
        self._unobserved.append(rec)

    def fold_metrics(self) -> None:
        """Observe pending records in the metrics, then queue them for the store."""
        if self._unobserved:
            batch, self._unobserved = self._unobserved, []
            self._fold(batch)
            self._unwritten.extend(batch)
            over = len(self._unwritten) - self._cfg.queue_max
            if over > 0:
                del self._unwritten[:over]
                self._metrics.usage_dropped.inc(over)
                log.error("usage queue full: dropped %d oldest records", over)
        self._metrics.usage_pending.set(len(self._unwritten))

    async def _fold_in_slices(self) -> None:
        # Folding thousands of records at once stalls the loop for milliseconds (the p99
        # showed it); slices with a yield between keep requests moving.
        while len(self._unobserved) > _SLICE:
            head, self._unobserved = self._unobserved[:_SLICE], self._unobserved[_SLICE:]
            self._fold(head)
            self._unwritten.extend(head)
            await asyncio.sleep(0)
        self.fold_metrics()

    async def flush(self) -> bool:
        """Write everything pending; False if the store refused (records are kept for the next try)."""
        async with self._lock:
            await self._fold_in_slices()
            try:
                while self._unwritten:
                    batch = self._unwritten[: self._batch]
                    await self._write(batch)
                    del self._unwritten[: len(batch)]
                    await asyncio.sleep(0)
                if self._spill is not None and self._spill.count:
                    await self._replay_spill()
                touched = self._take_last_used()
                if touched:
                    await self._touch(touched)
            except Exception as exc:  # the store's failure must never reach a request
                self._metrics.usage_write_errors.inc()
                if self.healthy:
                    log.warning("usage write failed, will retry: %s", type(exc).__name__)
                self.healthy = False
                await self._spill_excess(keep=self._spill_after)
                return False
            finally:
                self._metrics.usage_pending.set(len(self._unwritten))
            if not self.healthy:
                log.info("usage writes recovered")
            self.healthy = True
            return True

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-ledger")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.flush_interval)
            await self.flush()

    async def close(self, attempts: int = 5) -> None:
        """Stop the loop and flush what is left, retrying a few times before giving up loudly."""
        await stop_task(self._task)
        for i in range(attempts):
            if await self.flush():
                return
            await asyncio.sleep(0.2 * (i + 1))
        async with self._lock:
            await self._spill_excess(keep=0)
        if self._unwritten:
            log.error("usage records lost at shutdown: %d", len(self._unwritten))
        if self._spill is not None:
            self._spill.close()

    async def _replay_spill(self) -> None:
        """Write what an outage (or a previous run) left in the spill file, then empty it.
        A crash between the two writes it again next time; the request-id key skips the repeats."""
        spill = self._spill
        assert spill is not None
        loop = asyncio.get_running_loop()
        records = await loop.run_in_executor(None, spill.read)
        for i in range(0, len(records), self._batch):
            await self._write(records[i: i + self._batch])
            await asyncio.sleep(0)
        await loop.run_in_executor(None, spill.clear)
        log.info("usage: wrote %d records from the spill file %s", len(records), spill.path.name)

    async def _spill_excess(self, keep: int) -> None:
        """Move the oldest records past ``keep`` from memory to the spill file (durable first)."""
        over = len(self._unwritten) - keep
        if self._spill is None or over <= 0:
            return
        batch = self._unwritten[:over]
        try:
            await asyncio.get_running_loop().run_in_executor(None, self._spill.append, batch)
        except OSError as exc:  # a full or read-only disk: keep them in memory, bounded by queue_max
            log.error("usage spill to %s failed: %s", self._spill.path, type(exc).__name__)
            return
        del self._unwritten[:over]
        self._metrics.usage_pending.set(len(self._unwritten))
        log.warning("store unavailable: spilled %d usage records to %s (%d there)", over, self._spill.path, self._spill.count)

    @property
    def pending(self) -> int:
        return len(self._unobserved) + len(self._unwritten)

    @property
    def spilled(self) -> int:
        """Records waiting in the spill file."""
        return self._spill.count if self._spill is not None else 0
