"""Guardrail records: tool-call approvals (pending, decided, used once), tool decisions, prompt captures.

Kept in the store so an approval given on one replica is seen by every other, and survives a
restart; state changes are single conditional UPDATEs, so two replicas cannot both redeem one, and
each decision and redemption is a ``Store.apply`` with its change record and audit entry. The cap
on an identity's pending approvals is checked by the insert itself, so replicas cannot overshoot it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Column, Float, Index, Integer, String, Table, Text, delete, func, literal, select, text

from ..core import clock
from ..core.types import ChangeEvent
from . import schema as t
from .base import Writes
from .sql import TableQueries, _guarded

_PENDING_LOCK = 0x51_1C_E1  # pg advisory lock namespace: one identity's holds count and insert in turn

tool_approvals = Table(
    "tool_approvals", t.metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("status", String(16), nullable=False),  # pending | approved | denied | used
    Column("identity_id", String(64), nullable=False),
    Column("identity_name", String(128), nullable=False),
    Column("request_id", String(64), nullable=False),
    Column("model", String(256), nullable=False),
    Column("context_digest", String(64), nullable=False),
    Column("tool", String(64), nullable=False),
    Column("call_id", String(128), nullable=False),
    Column("args_sha256", String(64), nullable=False),
    Column("args_masked", Text, nullable=False),
    Column("decided_by", String(128)),
    Column("decided_at", Float),
    Column("used_at", Float),
    Column("args_sealed", Text),  # the canonical arguments, sealed; NULL when too long to show (never approvable)
    Column("args_chars", Integer),  # characters of the canonical arguments
    Index("ix_tool_approvals_status", "status", "created_at"),
    Index("ix_tool_approvals_identity", "identity_id", "status", "expires_at"),
)

tool_decisions = Table(
    "tool_decisions", t.metadata,
    Column("seq", t.RowSeq, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("request_id", String(64), nullable=False),
    Column("identity_id", String(64)),
    Column("model", String(256)),
    Column("context_digest", String(64)),
    Column("tool", String(64), nullable=False),
    Column("call_id", String(128)),
    Column("decision", String(16), nullable=False),  # allow | block | hold | approved | denied | redeemed
    Column("reason", String(256), nullable=False),
    Column("args_masked", Text),
    Column("args_sha256", String(64)),
    Column("approval_id", String(64)),
    Column("approver", String(128)),
    Column("policy_version", Integer),  # the policy version whose tool registry decided (issue 11)
    Column("policy_hash", String(64)),
    # an MCP tool call (issue 25, migration 0014): how it went, and the model tool call that proposed it
    Column("latency_ms", Float),
    Column("result_bytes", Integer),
    Column("upstream_status", String(32)),
    Column("tool_call_id", String(128)),
    Column("result_masked", Text),  # the result as it went back, masked (bounded by the gateway)
)

DECISION_COLUMNS = tuple(c.name for c in tool_decisions.columns if c.name != "seq")

prompt_captures = Table(
    "prompt_captures", t.metadata,
    Column("seq", t.RowSeq, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False, index=True),
    Column("expires_at", Float, nullable=False, index=True),
    Column("request_id", String(64), nullable=False),
    Column("identity_id", String(64)),
    Column("model", String(256)),
    Column("text", Text, nullable=False),  # masked by the detectors before it is written
)


class GuardRecords(TableQueries):
    """Queries of the guardrail tables over the store's engine."""

    @_guarded
    async def create_approval(self, row: dict[str, Any], max_pending: int | None = None) -> float | None:
        """Insert a pending approval unless its identity already has ``max_pending`` unexpired pending ones:
        None when inserted, else the seconds until the first of those expires.

        One INSERT ... SELECT ... WHERE count < cap: SQLite runs it under its write lock, Postgres
        behind a per-identity transaction lock, so two replicas holding at once cannot both pass.
        """
        ta = tool_approvals.c
        async with self.engine.begin() as conn:
            if max_pending is None:
                await conn.execute(tool_approvals.insert().values(**row))
                return None
            if self._store.dialect == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:ns, hashtext(:who))"),
                                   {"ns": _PENDING_LOCK, "who": row["identity_id"]})
            now, mine = row["created_at"], (ta.identity_id == row["identity_id"], ta.status == "pending")
            waiting = select(func.count()).where(*mine, ta.expires_at > now).scalar_subquery()
            values = select(*(literal(v, tool_approvals.c[k].type) for k, v in row.items())).where(waiting < max_pending)
            if (await conn.execute(tool_approvals.insert().from_select(list(row), values))).rowcount == 1:
                return None
            first = (await conn.execute(select(func.min(ta.expires_at)).where(*mine, ta.expires_at > now))).scalar()
        return max(0.0, float(first) - now) if first is not None else 0.0

    @_guarded
    async def get_approval(self, approval_id: str) -> dict[str, Any] | None:
        async with self.engine.connect() as conn:
            r = (await conn.execute(select(tool_approvals).where(tool_approvals.c.id == approval_id))).first()
        return dict(r._mapping) if r else None

    @_guarded
    async def list_approvals(self, status: str | None, limit: int = 100) -> list[dict[str, Any]]:
        q = select(tool_approvals).order_by(tool_approvals.c.created_at.desc()).limit(limit)
        if status:
            q = q.where(tool_approvals.c.status == status)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    @_guarded
    async def people(self, identity_ids: list[str]) -> dict[str, tuple[str, str | None]]:
        """(owner, team) of each of these identities that exists: what separation of duties compares."""
        q = select(t.identities.c.id, t.identities.c.owner, t.identities.c.team).where(t.identities.c.id.in_(identity_ids))
        async with self.engine.connect() as conn:
            return {r.id: (r.owner, r.team) for r in await conn.execute(q)}

    async def decide(self, approval_id: str, approved: bool, by: str, now: float, *, change: ChangeEvent,
                     record: dict[str, Any]) -> bool:
        """pending -> approved|denied, only while unexpired, with its change record, audit entry and tool
        decision in one transaction; False when it was not pending."""
        ta = tool_approvals.c
        return await self._apply(Writes().transition(
            tool_approvals, approval_id, {"status": "approved" if approved else "denied", "decided_by": by, "decided_at": now},
            ta.status == "pending", ta.expires_at > now, otherwise=_Moved()).insert(tool_decisions, record), change)

    async def redeem(self, approval_id: str, identity_id: str, digest: str, now: float, *, change: ChangeEvent,
                     record: dict[str, Any]) -> bool:
        """approved -> used, once, for its requester, with the same arguments, before it expires; with its
        change record, audit entry and tool decision in one transaction."""
        ta = tool_approvals.c
        return await self._apply(Writes().transition(
            tool_approvals, approval_id, {"status": "used", "used_at": now},
            ta.status == "approved", ta.identity_id == identity_id, ta.args_sha256 == digest, ta.expires_at > now,
            ta.used_at.is_(None), otherwise=_Moved()).insert(tool_decisions, record), change)

    async def _apply(self, writes: Writes, change: ChangeEvent) -> bool:
        try:
            await self._store.apply(writes, change)
        except _Moved:
            return False
        return True

    @_guarded
    async def record_decisions(self, rows: list[dict[str, Any]]) -> None:
        """One row per tool decision (a column a row leaves out is NULL), on the driver: an MCP tools/call writes
        one each, so this runs at the call rate (SQLAlchemy Core cost several times the CPU per row)."""
        await self._store.insert_rows(tool_decisions, DECISION_COLUMNS,
                                      [tuple(r.get(c) for c in DECISION_COLUMNS) for r in rows])

    @_guarded
    async def list_decisions(self, limit: int = 100) -> list[dict[str, Any]]:
        q = select(tool_decisions).order_by(tool_decisions.c.seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    @_guarded
    async def capture(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            async with self.engine.begin() as conn:
                await conn.execute(prompt_captures.insert(), rows)

    @_guarded
    async def purge_captures(self, now: float | None = None) -> int:
        """Delete captures past their retention; how many went."""
        q = delete(prompt_captures).where(prompt_captures.c.expires_at <= (clock.now() if now is None else now))
        async with self.engine.begin() as conn:
            return int((await conn.execute(q)).rowcount or 0)


class _Moved(Exception):
    """The approval was no longer in the state a transition needs: the apply wrote nothing."""


def dumps(value: Any) -> str:
    return msgspec.json.encode(value).decode()
