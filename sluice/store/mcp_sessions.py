"""MCP sessions ended by their client (a DELETE), so that every replica refuses them at once.

A session lives in its sealed id (``sluice.mcp.session``) and needs no row while it lasts; only its
end does. The row is kept by the digest of the id (never the id) until the session would have
expired anyway, then purged.
"""

from __future__ import annotations


from sqlalchemy import Column, Float, Index, String, Table, delete, select

from ..core import clock
from . import schema as t
from .sql import TableQueries, _guarded

mcp_ended_sessions = Table(
    "mcp_ended_sessions", t.metadata,
    Column("digest", String(64), primary_key=True),
    Column("ended_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Index("ix_mcp_ended_sessions_expires", "expires_at"),
)


class EndedSessions(TableQueries):
    """The ended-session list over the store's engine."""

    @_guarded
    async def end(self, digest: str, expires_at: float) -> None:
        """Record that the session with this id digest has ended (idempotent)."""
        row = {"digest": digest, "ended_at": clock.now(), "expires_at": expires_at}
        async with self.engine.begin() as conn:  # two replicas ending it at once: one row, no error
            await conn.execute(self._store._insert(mcp_ended_sessions).values(**row).on_conflict_do_nothing())

    @_guarded
    async def ended(self, digest: str) -> bool:
        c = mcp_ended_sessions.c
        async with self.engine.connect() as conn:
            return (await conn.execute(select(c.digest).where(c.digest == digest))).first() is not None

    @_guarded
    async def purge(self, now: float | None = None) -> int:
        """Forget ended sessions that would have expired by now; how many went."""
        c = mcp_ended_sessions.c
        async with self.engine.begin() as conn:
            done = await conn.execute(delete(mcp_ended_sessions).where(c.expires_at <= (clock.now() if now is None else now)))
        return int(done.rowcount or 0)
