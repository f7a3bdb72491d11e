"""Runs batches: any replica takes a live batch under its lease in the store, runs its pending lines through the
data plane's own handlers as its owner (scopes, routing, limits, guardrails, usage), and finalizes it.

A line's result and its usage record are written together, once (``BatchRecords.finish_line``); its request id
is the batch's id and a digest of its ``custom_id``, so the usage ledger's own copy of the record and the copy
written again at finalize are one row. A replica that dies mid-batch loses its lease; the next holder runs the
lines still pending (a line cut mid-call runs again, and is answered and charged once).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ..core import clock
from ..core.errors import GatewayError, error_body
from ..core.exchange import Exchange, Reply, StreamReply
from ..core.lifecycle import stop_task
from ..core.types import UsageRecord
from ..store.leases import Leases
from .owner import BatchLine, BatchOwner
from .records import BatchRecords
from .usage import summed

log = logging.getLogger("sluice.batches")

Handler = Callable[[Exchange], Awaitable[Reply | StreamReply]]
LEASE_TTL = 15.0  # renewed every fifth of it; a replica that died is replaced once it runs out
CHECK_S = 0.2  # how soon a cancel or the expiry is seen by the replica running the batch
RETRY_STATUSES = (429, 503)  # the gateway's own back-pressure: the line waits and runs again, it does not fail
_HEADERS = {"content-type": "application/json"}
_encode = msgspec.json.encode


def request_id(batch_id: str, custom_id: str) -> str:
    """The one request id of a line, whichever replica runs it and however often."""
    return f"{batch_id}-{hashlib.sha256(custom_id.encode()).hexdigest()[:20]}"


def file_id(batch_id: str, kind: str) -> str:
    return f"file-{kind}-{batch_id.removeprefix('batch_')}"


class Runner:
    """The background job of every replica: take the batches whose lease is free, drive each to its end."""

    def __init__(self, records: BatchRecords, handlers: dict[str, Handler], taps: dict[str, Callable],
                 write_usage: Callable[[list[UsageRecord]], Awaitable[None]], price: Callable | None = None, *,
                 concurrency: int = 8, poll_s: float = 1.0, retention_s: float = 30 * 86_400.0) -> None:
        self.records = records
        self.retention_s = retention_s  # how long output and error files are kept
        self.leases = Leases(records._store)  # type: ignore[arg-type]
        self.handlers = handlers
        self.taps = taps
        self.write_usage = write_usage
        self.price = price
        self.concurrency = concurrency
        self.poll_s = poll_s
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._driving: dict[str, asyncio.Task] = {}
        self._stops: dict[str, asyncio.Event] = {}  # the batches running here: set to take no new line
        self.wake = asyncio.Event()  # set by create: start at once rather than at the next poll

    async def run(self) -> None:
        try:
            while True:
                try:
                    for batch_id in await self.records.live():
                        if batch_id not in self._driving and await self.leases.acquire(
                                f"batch:{batch_id}", self.holder, LEASE_TTL):
                            task = asyncio.get_running_loop().create_task(self._drive(batch_id), name=f"batch {batch_id}")
                            self._driving[batch_id] = task
                            task.add_done_callback(lambda _t, b=batch_id: self._driving.pop(b, None))
                except GatewayError as exc:  # the store is away: try again at the next poll
                    log.warning("batches: %s", exc.message)
                self.wake.clear()
                try:
                    await asyncio.wait_for(self.wake.wait(), self.poll_s)
                except asyncio.TimeoutError:
                    pass
        finally:  # the batches driven here end before the runner does (the gateway closes the store after)
            await asyncio.gather(*map(stop_task, list(self._driving.values())))

    def stop(self, batch_id: str) -> None:
        """A batch cancelled through this replica: if it runs here, no new line starts from now (another replica
        running it reads the status from the store within ``CHECK_S``)."""
        stop = self._stops.get(batch_id)
        if stop is not None:
            stop.set()

    async def _drive(self, batch_id: str) -> None:
        lease = f"batch:{batch_id}"
        try:
            batch = await self.records.batch(batch_id)
            if batch is None:
                return
            if batch["status"] == "validating":
                await self.records.move(batch_id, ("validating",), "in_progress", in_progress_at=clock.now())
            if batch["status"] in ("validating", "in_progress") and not await self._work(batch):
                return  # the lease went to another replica: it finishes the batch
            await self._finalize(batch_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("batch %s: stopped, to be resumed", batch_id)
        finally:
            try:
                await asyncio.shield(self.leases.release(lease, self.holder))
            except Exception:
                pass

    async def _work(self, batch: dict[str, Any]) -> bool:
        """Run the pending lines until none is left, the batch is cancelled or expires; False if the lease was lost."""
        batch_id = batch["id"]
        handler = self.handlers[batch["endpoint"]]
        owner = BatchOwner(batch["identity_id"], batch["identity_name"], batch_id)
        todo = list(reversed(await self.records.pending(batch_id)))
        stop = self._stops[batch_id] = asyncio.Event()
        lost = False

        async def worker() -> None:
            while todo and not stop.is_set():
                idx, custom_id, body = todo.pop()
                await self._line(batch_id, batch["endpoint"], handler, owner, idx, custom_id, body, stop)

        workers = [asyncio.ensure_future(worker()) for _ in range(min(self.concurrency, max(1, len(todo))))]
        renewed = clock.monotonic()
        try:
            while not all(w.done() for w in workers):
                await asyncio.wait(workers, timeout=CHECK_S)
                if clock.monotonic() - renewed > LEASE_TTL / 5:
                    if not await self.leases.acquire(f"batch:{batch_id}", self.holder, LEASE_TTL):
                        lost = True
                        stop.set()
                        break
                    renewed = clock.monotonic()
                now = await self.records.batch(batch_id)
                if now is None or now["status"] != "in_progress" or clock.now() >= now["expires_at"]:
                    stop.set()  # cancelled or expired: no new line; the ones in flight finish
            await asyncio.gather(*workers, return_exceptions=True)
        finally:
            self._stops.pop(batch_id, None)
            for w in workers:
                w.cancel()
        for w in workers:
            if w.done() and not w.cancelled() and w.exception() is not None:
                raise w.exception()  # type: ignore[misc]
        return not lost

    async def _line(self, batch_id: str, url: str, handler: Handler, owner: BatchOwner, idx: int, custom_id: str,
                    body: str, stop: asyncio.Event) -> None:
        rid = request_id(batch_id, custom_id)
        line = BatchLine(owner, rid)  # every run of the line is charged as one against the owner's limits
        wait = 0.5
        while True:
            got: asyncio.Future[UsageRecord] = asyncio.get_running_loop().create_future()
            self.taps[rid] = lambda rec, f=got: f.done() or f.set_result(rec)
            ex = Exchange("POST", url, {}, {}, _HEADERS, body.encode(), None, rid, line, None)
            try:
                reply = await handler(ex)
            except asyncio.CancelledError:  # the replica stops mid-line: the line runs again, and its record then
                self.taps[rid] = lambda rec: False  # is the line's one usage row, not this cut run's
                raise
            except GatewayError as exc:
                reply = Reply(exc.status, exc.rendered if exc.rendered is not None else _encode(error_body(exc)))
                retry = exc.retry_after
            except Exception:  # a fault of ours on this line fails the line, not the batch (nor loops on it)
                log.exception("batch %s: line %s failed inside the gateway", batch_id, idx)
                reply, retry = Reply(500, _encode(error_body(GatewayError(
                    "The server had an error processing this request.", code="internal_error")))), None
            else:
                retry = None
            if isinstance(reply, StreamReply):  # refused at create; a cached stream answer is closed unread
                await reply.chunks.aclose()
                reply = Reply(400, b'{"error":{"message":"a batch request cannot stream","type":"invalid_request_error"}}')
            try:
                rec: UsageRecord | None = await asyncio.wait_for(got, 5.0)
            except asyncio.TimeoutError:
                rec = None
            finally:
                self.taps.pop(rid, None)
            if reply.status in RETRY_STATUSES and not stop.is_set():
                # yields to interactive traffic: a refused line waits and runs again (its refusals are usage rows
                # of their own status, with no tokens); the answer and its charge are the attempt that ran
                await asyncio.sleep(min(retry or wait, 10.0))
                wait = min(wait * 2, 10.0)
                rid = f"{request_id(batch_id, custom_id)[:54]}.{secrets.token_hex(4)}"
                continue
            break
        ok = 200 <= reply.status < 300
        try:
            answer = msgspec.json.decode(reply.body)
        except msgspec.DecodeError:
            answer = reply.body.decode("utf-8", "replace")
        result = {"id": f"batch_req_{hashlib.sha256(rid.encode()).hexdigest()[:24]}", "custom_id": custom_id,
                  "response": {"status_code": reply.status, "request_id": rid, "body": answer}, "error": None}
        if rec is not None and not rec.cost_nanos and self.price is not None and rec.model is not None and (
                rec.prompt_tokens or rec.completion_tokens):
            rec.cost_nanos = self.price(rec.model, rec.prompt_tokens, rec.completion_tokens, rec.cached_tokens, None,
                                        rec.cache_creation_tokens)
        usage = _encode(rec).decode() if rec is not None else None
        await self.records.finish_line(batch_id, idx, "ok" if ok else "error", rid, _encode(result).decode(), usage)

    async def _finalize(self, batch_id: str) -> None:
        """The output and error files, the counts and the final status, in one transaction."""
        batch = await self.records.batch(batch_id)
        if batch is None or batch["status"] not in ("in_progress", "finalizing", "cancelling"):
            return
        now = clock.now()
        if batch["status"] == "in_progress":
            await self.records.move(batch_id, ("in_progress",), "finalizing", finalizing_at=now)
        # the usage records kept with the lines, written again: one row each whoever wrote first
        kept = [msgspec.json.decode(u, type=UsageRecord) for u in await self.records.usage(batch_id)]
        for at in range(0, len(kept), 500):
            await self.write_usage(kept[at:at + 500])
        rows = await self.records.results(batch_id)
        out = [r for state, _, r in rows if state == "ok"]
        err = [r for state, _, r in rows if state == "error"]
        pending = [cid for state, cid, _ in rows if state == "pending"]
        if batch["status"] == "cancelling":
            status = "cancelled"
        elif pending and now >= batch["expires_at"]:
            status = "expired"
        elif pending:
            return  # stopped early (a store error) with lines to run: resumed at the next poll
        else:
            status = "completed"
        if status == "expired":
            err += [_encode({"id": f"batch_req_{hashlib.sha256(c.encode()).hexdigest()[:24]}", "custom_id": c,
                             "response": None, "error": {"code": "batch_expired",
                                                         "message": "This line was not run before the batch expired."}
                             }).decode() for c in pending]
        files = []
        fields: dict[str, Any] = {f"{status}_at": now, "completed": len(out), "failed": len(err),
                                  "usage": _encode(summed(r for _, _, r in rows if r)).decode()}
        for kind, lines in (("output", out), ("error", err)):
            if lines:
                data = ("\n".join(lines) + "\n").encode()
                fid = file_id(batch_id, kind)
                files.append(({"id": fid, "identity_id": batch["identity_id"], "purpose": "batch_output",
                               "filename": f"{batch_id}_{kind}.jsonl", "bytes": len(data), "created_at": now,
                               "expires_at": now + self.retention_s}, data))
                fields[f"{kind}_file_id"] = fid
        await self.records.finalize(batch_id, status, fields, files)
