"""The OpenAI Batch API (issue 27 item 5): ``/v1/files`` for batch input and output files, ``/v1/batches`` to run
a file's lines through the data plane as their owner, resumed by any replica (files and progress in the store)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..core import clock

from .endpoints import Endpoints
from .purge import FilePurge
from .records import BatchRecords
from .runner import Runner, request_id

__all__ = ["Batches", "BatchRecords", "Endpoints", "FilePurge", "Runner", "request_id"]

log = logging.getLogger("sluice.batches")


class Batches:
    """The routes and the background runner, built from the store, the data plane's handlers and the ledger."""

    def __init__(self, store: Any, data_plane: Any, ledger: Any, price: Callable | None, max_line_bytes: int,
                 identify: Callable, *, concurrency: int = 8, retention_s: float = 30 * 86_400.0) -> None:
        records = BatchRecords(store)
        self.purge = FilePurge(records)
        handlers = {"/v1/chat/completions": data_plane.chat_completions, "/v1/embeddings": data_plane.embeddings,
                    "/v1/completions": data_plane.completions}
        self.runner = Runner(records, handlers, ledger.taps, store.write_usage, price, concurrency=concurrency,
                             retention_s=retention_s)
        self.endpoints = Endpoints(identify, records, max_line_bytes, self.runner.wake.set,
                                   self.runner.stop, frozenset(handlers), retention_s=retention_s)

    def routes(self) -> list[tuple[str, str, object]]:
        return self.endpoints.routes()

    async def retire(self, identity_ids: list[str]) -> None:
        """Identities disabled or offboarded: their unfinished batches are cancelled (no new line starts)."""
        try:
            for batch_id in await self.runner.records.cancel_of(identity_ids, clock.now()):
                self.runner.stop(batch_id)
        except Exception as exc:  # the owner's lines fail authentication anyway; this only saves running them
            log.warning("batches of retired identities not cancelled: %s", type(exc).__name__)

    async def offboard(self, identity_ids: list[str]) -> None:
        """Owners offboarded: their identities' files (uploads, output and error files) and batches are deleted."""
        try:  # their unfinished batches were cancelled by ``retire`` (offboarding disables them too)
            gone = await self.runner.records.purge_identities(identity_ids)
            log.info("batches: %d files of %d offboarded identities deleted", gone, len(identity_ids))
        except Exception as exc:  # the files stay invisible (their owner cannot authenticate); the next offboard retries
            log.warning("batch files of offboarded identities not deleted: %s", type(exc).__name__)
