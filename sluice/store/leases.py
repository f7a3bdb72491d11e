"""Leases in the store: one holder at a time for a named background job across replicas (usage retention),
held for a time and renewed by the holder, so a holder that died is replaced once its lease expires."""

from __future__ import annotations

from sqlalchemy import Column, Float, String, Table, delete

from ..core import clock
from . import schema as t
from .sql import TableQueries, _guarded

leases = Table(
    "leases", t.metadata,  # migration 0016
    Column("name", String(64), primary_key=True),
    Column("holder", String(128), nullable=False),
    Column("expires_at", Float, nullable=False),
)


class Leases(TableQueries):
    """Take, renew and give back named leases over the store's engine."""

    @_guarded
    async def acquire(self, name: str, holder: str, ttl: float, now: float | None = None) -> bool:
        """Hold ``name`` for ``ttl`` seconds from now if it is free, expired or already ``holder``'s (a renewal)."""
        at = clock.now() if now is None else now
        c = leases.c
        stmt = self._store._insert(leases).values(name=name, holder=holder, expires_at=at + ttl)
        stmt = stmt.on_conflict_do_update(index_elements=[c.name], set_={"holder": holder, "expires_at": at + ttl},
                                          where=(c.expires_at <= at) | (c.holder == holder))
        async with self.engine.begin() as conn:
            return (await conn.execute(stmt)).rowcount == 1

    @_guarded
    async def release(self, name: str, holder: str) -> None:
        """Give ``name`` back now, if ``holder`` still holds it."""
        async with self.engine.begin() as conn:
            await conn.execute(delete(leases).where(leases.c.name == name, leases.c.holder == holder))

    @_guarded
    async def holder(self, name: str, now: float | None = None) -> str | None:
        """Who holds ``name`` now, or None."""
        from sqlalchemy import select

        at = clock.now() if now is None else now
        async with self.engine.connect() as conn:
            return (await conn.execute(select(leases.c.holder).where(leases.c.name == name,
                                                                     leases.c.expires_at > at))).scalar_one_or_none()
