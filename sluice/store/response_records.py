"""Stored responses of the Responses API (``store: true``): agent memory, kept per identity until it expires.

A row's ``sealed`` column is opaque here (``sluice.memory`` seals and opens it); what the store knows
is whose it is, when it expires and which response it follows. A chain is read in one recursive query
from the newest link back, so rebuilding a long conversation is one round trip on any replica.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Float, Index, String, Table, Text, delete, literal, select

from ..core import clock
from . import schema as t
from .sql import TableQueries, _guarded

PURGE_BATCH = 1000  # rows per purge transaction: a long purge never holds the write lock for long

stored_responses = Table(
    "stored_responses", t.metadata,
    Column("id", String(64), primary_key=True),
    Column("identity_id", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("previous_id", String(64)),
    Column("model", String(256), nullable=False),
    Column("sealed", Text, nullable=False),
    Index("ix_stored_responses_identity", "identity_id"),
    Index("ix_stored_responses_expires", "expires_at"),
)


def of_identities(identity_ids: list[str]) -> tuple[Any, Any]:
    """``Writes.delete`` arguments that remove every stored response of these identities (offboarding)."""
    return stored_responses, stored_responses.c.identity_id.in_(identity_ids)


class ResponseRecords(TableQueries):
    """Queries of ``stored_responses`` over the store's engine."""

    @_guarded
    async def put(self, row: dict[str, Any]) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(stored_responses.insert().values(**row))

    @_guarded
    async def get(self, response_id: str, identity_id: str, now: float | None = None) -> dict[str, Any] | None:
        """The live row of this id if it is this identity's, else None (another's looks exactly like none)."""
        c = stored_responses.c
        q = select(stored_responses).where(c.id == response_id, c.identity_id == identity_id,
                                           c.expires_at > (clock.now() if now is None else now))
        async with self.engine.connect() as conn:
            r = (await conn.execute(q)).first()
        return dict(r._mapping) if r else None

    @_guarded
    async def chain(self, response_id: str, identity_id: str, limit: int, now: float | None = None) -> list[dict[str, Any]]:
        """The links from ``response_id`` back to the first, newest first, each live and this identity's;
        the walk stops at a link that is missing, expired or another's (the caller sees the gap), and
        after ``limit`` links."""
        c = stored_responses.c
        at = clock.now() if now is None else now
        mine = (c.identity_id == identity_id, c.expires_at > at)
        first = select(c.id, c.previous_id, c.sealed, literal(1).label("depth")).where(c.id == response_id, *mine)
        walk = first.cte("walk", recursive=True)
        older = stored_responses.alias("older")
        o = older.c
        walk = walk.union_all(
            select(o.id, o.previous_id, o.sealed, (walk.c.depth + 1).label("depth"))
            .where(o.id == walk.c.previous_id, o.identity_id == identity_id, o.expires_at > at, walk.c.depth < limit))
        q = select(walk.c.id, walk.c.previous_id, walk.c.sealed).order_by(walk.c.depth)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    @_guarded
    async def delete(self, response_id: str, identity_id: str) -> bool:
        """Delete this identity's response; False when there was none of its (expired ones included)."""
        c = stored_responses.c
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(stored_responses).where(c.id == response_id, c.identity_id == identity_id))
        return bool(done.rowcount)

    @_guarded
    async def purge(self, now: float | None = None, batch: int = PURGE_BATCH) -> int:
        """Delete responses past their retention, ``batch`` rows per transaction; how many went."""
        c = stored_responses.c
        at = clock.now() if now is None else now
        gone = 0
        while True:
            ids = select(c.id).where(c.expires_at <= at).limit(batch).scalar_subquery()
            async with self.engine.begin() as conn:
                n = int((await conn.execute(delete(stored_responses).where(c.id.in_(ids)))).rowcount or 0)
            gone += n
            if n < batch:
                return gone
