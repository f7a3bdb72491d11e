"""The Batch API's rows (migration 0020): files in chunked rows, batches, and one row per line of a batch.

Every replica reads the same rows, so a batch started on one replica is resumed by any other, and a file
uploaded through one is downloaded through another. A line's result is written only while the line is
pending (``finish_line``), and (batch, custom_id) is unique: each line is answered once, whoever runs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any
import secrets

from sqlalchemy import (BigInteger, Column, Float, Index, Integer, LargeBinary, String, Table, Text, UniqueConstraint,
                        delete, func, select, update)

from ..core import clock
from ..store import schema as t
from ..store.sql import TableQueries, _guarded

CHUNK = 1024 * 1024  # bytes per chunk row: bounded rows on both stores, and a download read a chunk at a time
LINES_PER_INSERT = 1000

batch_files = Table(
    "batch_files", t.metadata,
    Column("id", String(64), primary_key=True),
    Column("identity_id", String(64), nullable=False),
    Column("purpose", String(32), nullable=False),
    Column("filename", String(512), nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float),  # migration 0021: NULL keeps the file; past it the file is gone (and purged)
    Index("ix_batch_files_identity", "identity_id", "created_at"),
    Index("ix_batch_files_expires", "expires_at"),
)
batch_file_chunks = Table(
    "batch_file_chunks", t.metadata,
    Column("file_id", String(64), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
batches = Table(
    "batches", t.metadata,
    Column("id", String(64), primary_key=True),
    Column("identity_id", String(64), nullable=False),
    Column("identity_name", String(256), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("input_file_id", String(64), nullable=False),
    Column("completion_window", String(16), nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    *(Column(f"{s}_at", Float) for s in ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling",
                                         "cancelled")),
    Column("output_file_id", String(64)),
    Column("error_file_id", String(64)),
    Column("total", Integer, nullable=False),
    Column("completed", Integer, nullable=False),
    Column("failed", Integer, nullable=False),
    Column("errors", Text),
    Column("metadata", Text),
    Column("usage", Text),  # migration 0021: the summed token usage, once finalized
    Index("ix_batches_identity", "identity_id", "created_at"),
    Index("ix_batches_status", "status"),
)
batch_lines = Table(
    "batch_lines", t.metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("custom_id", String(512), nullable=False),
    Column("body", Text, nullable=False),
    Column("state", String(8), nullable=False),  # pending | ok | error
    Column("request_id", String(64)),
    Column("result", Text),
    Column("usage", Text),
    UniqueConstraint("batch_id", "custom_id", name="ux_batch_lines_custom_id"),
    Index("ix_batch_lines_state", "batch_id", "state"),
)

LIVE = ("validating", "in_progress", "finalizing", "cancelling")  # a runner still has work on these
PURGE_BATCH = 100  # files per purge transaction: each a bounded delete, the store's writer gets in between


def upload_id(now: float) -> str:
    """A new upload's file id: its chunks are written before its row, and the time in the id lets the purge
    tell an upload under way from one a dead replica left half-written."""
    return f"file-{int(now):08x}{secrets.token_hex(8)}"


def upload_started(file_id: str) -> float | None:
    """When the upload of ``file_id`` began (``upload_id``), or None for an id of another form."""
    core = file_id.removeprefix("file-")
    if len(core) != 24 or not file_id.startswith("file-"):
        return None
    try:
        return float(int(core[:8], 16))
    except ValueError:
        return None


def _live(c: Any, now: float | None) -> Any:
    """Not expired: a file past its ``expires_at`` is answered as a missing one until the purge takes it."""
    return c.expires_at.is_(None) | (c.expires_at > (clock.now() if now is None else now))


def _chunks(file_id: str, data: bytes) -> list[dict[str, Any]]:
    return [{"file_id": file_id, "seq": i, "data": data[at:at + CHUNK]}
            for i, at in enumerate(range(0, max(len(data), 1), CHUNK))]


class BatchRecords(TableQueries):
    """Queries of the Batch API's tables over the store's engine."""

    # -- files ------------------------------------------------------------------------------

    @_guarded
    async def file(self, file_id: str, identity_id: str) -> dict[str, Any] | None:
        """The file if it is this identity's, else None (another's looks exactly like none)."""
        c = batch_files.c
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(batch_files).where(c.id == file_id, c.identity_id == identity_id,
                                                              _live(c, None)))).first()
        return dict(r._mapping) if r else None

    @_guarded
    async def files(self, identity_id: str, limit: int, after: str | None, purpose: str | None) -> list[dict[str, Any]]:
        """This identity's files, newest first, after the cursor ``after`` (a file id)."""
        c = batch_files.c
        q = select(batch_files).where(c.identity_id == identity_id, _live(c, None))
        if purpose:
            q = q.where(c.purpose == purpose)
        async with self.engine.connect() as conn:
            if after:
                at = (await conn.execute(select(c.created_at, c.id).where(c.id == after, c.identity_id == identity_id))).first()
                if at is not None:
                    q = q.where((c.created_at < at.created_at) | ((c.created_at == at.created_at) & (c.id < at.id)))
            rows = await conn.execute(q.order_by(c.created_at.desc(), c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    async def content(self, file_id: str) -> AsyncIterator[bytes]:
        """A file's bytes, one chunk row at a time."""
        seq = 0
        while True:
            data = await self._chunk(file_id, seq)
            if data is None:
                return
            yield data
            seq += 1

    @_guarded
    async def _chunk(self, file_id: str, seq: int) -> bytes | None:
        c = batch_file_chunks.c
        async with self.engine.connect() as conn:
            return (await conn.execute(select(c.data).where(c.file_id == file_id, c.seq == seq))).scalar_one_or_none()

    @_guarded
    async def delete_file(self, file_id: str, identity_id: str) -> bool:
        async with self.engine.begin() as conn:
            gone = await conn.execute(delete(batch_files).where(batch_files.c.id == file_id,
                                                                batch_files.c.identity_id == identity_id))
            if gone.rowcount != 1:
                return False
            await conn.execute(delete(batch_file_chunks).where(batch_file_chunks.c.file_id == file_id))
            return True

    @_guarded
    async def put_chunk(self, file_id: str, seq: int, data: bytes) -> None:
        """One chunk of an upload under way (its row comes with ``commit_upload``, so it is not yet a file)."""
        async with self.engine.begin() as conn:
            await conn.execute(batch_file_chunks.insert().values(file_id=file_id, seq=seq, data=data))

    @_guarded
    async def commit_upload(self, row: dict[str, Any]) -> None:
        """The file's row, once all its chunks are in: from now on it is a file."""
        async with self.engine.begin() as conn:
            await conn.execute(batch_files.insert().values(**row))

    @_guarded
    async def drop_chunks(self, file_id: str) -> None:
        """The chunks of an upload that failed: nothing of it stays."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(batch_file_chunks).where(batch_file_chunks.c.file_id == file_id))

    @_guarded
    async def purge_expired(self, now: float) -> int:
        """Delete up to ``PURGE_BATCH`` files past their ``expires_at`` (rows and chunks): how many went."""
        c = batch_files.c
        async with self.engine.begin() as conn:
            ids = [r.id for r in await conn.execute(select(c.id).where(c.expires_at <= now).limit(PURGE_BATCH))]
            if ids:
                await conn.execute(delete(batch_file_chunks).where(batch_file_chunks.c.file_id.in_(ids)))
                await conn.execute(delete(batch_files).where(c.id.in_(ids)))
            return len(ids)

    @_guarded
    async def purge_abandoned(self, before: float) -> int:
        """Delete the chunks of uploads begun before ``before`` that never became a file (a replica died mid-upload)."""
        k = batch_file_chunks.c
        async with self.engine.begin() as conn:
            orphans = select(k.file_id).where(k.seq == 0, ~select(batch_files.c.id).where(
                batch_files.c.id == k.file_id).exists())
            ids = [r.file_id for r in await conn.execute(orphans)
                   if (at := upload_started(r.file_id)) is not None and at < before]
            if ids:
                await conn.execute(delete(batch_file_chunks).where(k.file_id.in_(ids)))
            return len(ids)

    @_guarded
    async def purge_identities(self, identity_ids: list[str]) -> int:
        """Offboarding: every file of these identities (uploads, output and error files), their batches and
        lines (the requests and answers they hold), in one transaction: how many files went."""
        f, b = batch_files.c, batches.c
        async with self.engine.begin() as conn:
            mine = select(f.id).where(f.identity_id.in_(identity_ids))
            n = len((await conn.execute(mine)).all())
            await conn.execute(delete(batch_file_chunks).where(batch_file_chunks.c.file_id.in_(mine)))
            await conn.execute(delete(batch_files).where(f.identity_id.in_(identity_ids)))
            theirs = select(b.id).where(b.identity_id.in_(identity_ids))
            await conn.execute(delete(batch_lines).where(batch_lines.c.batch_id.in_(theirs)))
            await conn.execute(delete(batches).where(b.identity_id.in_(identity_ids)))
            return n

    # -- batches ----------------------------------------------------------------------------

    @_guarded
    async def create(self, row: dict[str, Any], lines: list[dict[str, Any]], files: Iterable[tuple[dict, bytes]] = ()) -> None:
        """A batch with its lines (and, failed at validation, its error file) in one transaction."""
        async with self.engine.begin() as conn:
            for frow, data in files:
                await conn.execute(batch_files.insert().values(**frow))
                await conn.execute(batch_file_chunks.insert(), _chunks(frow["id"], data))
            await conn.execute(batches.insert().values(**row))
            for at in range(0, len(lines), LINES_PER_INSERT):
                await conn.execute(batch_lines.insert(), lines[at:at + LINES_PER_INSERT])

    @_guarded
    async def batch(self, batch_id: str, identity_id: str | None = None) -> dict[str, Any] | None:
        """The batch (only if it is ``identity_id``'s, when given)."""
        c = batches.c
        q = select(batches).where(c.id == batch_id)
        if identity_id is not None:
            q = q.where(c.identity_id == identity_id)
        async with self.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        return dict(r._mapping) if r else None

    @_guarded
    async def batches(self, identity_id: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        c = batches.c
        q = select(batches).where(c.identity_id == identity_id)
        async with self.engine.connect() as conn:
            if after:
                at = (await conn.execute(select(c.created_at, c.id).where(c.id == after, c.identity_id == identity_id))).first()
                if at is not None:
                    q = q.where((c.created_at < at.created_at) | ((c.created_at == at.created_at) & (c.id < at.id)))
            rows = await conn.execute(q.order_by(c.created_at.desc(), c.id.desc()).limit(limit))
            return [dict(r._mapping) for r in rows]

    @_guarded
    async def live(self) -> list[str]:
        """The batches a runner still has work on, oldest first."""
        c = batches.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.id).where(c.status.in_(LIVE)).order_by(c.created_at))
            return [r.id for r in rows]

    @_guarded
    async def move(self, batch_id: str, from_states: tuple[str, ...], status: str, **fields: Any) -> bool:
        """Set the status (and fields) if the batch is in one of ``from_states``: True when it moved."""
        c = batches.c
        async with self.engine.begin() as conn:
            done = await conn.execute(update(batches).where(c.id == batch_id, c.status.in_(from_states))
                                      .values(status=status, **fields))
            return done.rowcount == 1

    @_guarded
    async def cancel_of(self, identity_ids: list[str], now: float) -> list[str]:
        """Cancel every unfinished batch of these identities (they were disabled or offboarded): their ids."""
        c = batches.c
        mine = (c.identity_id.in_(identity_ids), c.status.in_(("validating", "in_progress")))
        async with self.engine.begin() as conn:
            ids = [r.id for r in await conn.execute(select(c.id).where(*mine))]
            if ids:
                await conn.execute(update(batches).where(c.id.in_(ids), *mine)
                                   .values(status="cancelling", cancelling_at=now))
            return ids

    @_guarded
    async def counts(self, batch_id: str) -> dict[str, int]:
        """Lines per state (pending, ok, error)."""
        c = batch_lines.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.state, func.count()).where(c.batch_id == batch_id).group_by(c.state))
            return {r[0]: r[1] for r in rows}

    @_guarded
    async def pending(self, batch_id: str) -> list[tuple[int, str, str]]:
        """(idx, custom_id, body) of the lines not yet answered, in input order."""
        c = batch_lines.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.idx, c.custom_id, c.body)
                                      .where(c.batch_id == batch_id, c.state == "pending").order_by(c.idx))
            return [(r.idx, r.custom_id, r.body) for r in rows]

    @_guarded
    async def finish_line(self, batch_id: str, idx: int, state: str, request_id: str, result: str,
                          usage: str | None) -> bool:
        """Record a line's result and usage record once: False when it was already answered."""
        c = batch_lines.c
        async with self.engine.begin() as conn:
            done = await conn.execute(update(batch_lines).where(c.batch_id == batch_id, c.idx == idx, c.state == "pending")
                                      .values(state=state, request_id=request_id, result=result, usage=usage))
            return done.rowcount == 1

    @_guarded
    async def results(self, batch_id: str) -> list[tuple[str, str, str | None]]:
        """(state, custom_id, result) of every line in input order."""
        c = batch_lines.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.state, c.custom_id, c.result).where(c.batch_id == batch_id).order_by(c.idx))
            return [(r.state, r.custom_id, r.result) for r in rows]

    @_guarded
    async def answers(self, batch_id: str) -> list[str]:
        """The results of the lines answered so far (JSON), for the batch's summed usage while it runs."""
        c = batch_lines.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.result).where(c.batch_id == batch_id, c.state != "pending"))
            return [r.result for r in rows]

    @_guarded
    async def usage(self, batch_id: str) -> list[str]:
        """The usage records kept with the answered lines (JSON), to write again idempotently."""
        c = batch_lines.c
        async with self.engine.connect() as conn:
            rows = await conn.execute(select(c.usage).where(c.batch_id == batch_id, c.usage.is_not(None)))
            return [r.usage for r in rows]

    @_guarded
    async def finalize(self, batch_id: str, status: str, fields: dict[str, Any],
                       files: list[tuple[dict[str, Any], bytes]]) -> bool:
        """The result files and the final status in one transaction, once: a replica that finalizes a batch
        another has already finalized changes nothing (its files' ids are the batch's own, so they conflict)."""
        c = batches.c
        async with self.engine.begin() as conn:
            done = await conn.execute(update(batches).where(c.id == batch_id, c.status.in_(LIVE))
                                      .values(status=status, **fields))
            if done.rowcount != 1:
                return False
            for frow, data in files:
                await conn.execute(batch_files.insert().values(**frow))
                await conn.execute(batch_file_chunks.insert(), _chunks(frow["id"], data))
            return True
