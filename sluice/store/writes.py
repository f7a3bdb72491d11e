"""One batch of ``Writes`` on an open connection, and the stored rows it touches: the two halves of
``SqlStore.apply`` that every change shares (the rows are what its audit entry's before/after cover)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from sqlalchemy import delete, select, update

from ..core import clock
from ..core.errors import Conflict
from ..core.types import SigningKey
from . import schema as t
from .base import Writes

Upsert = Callable[..., Any]  # (table, values, key="id") -> an INSERT ... ON CONFLICT UPDATE of the store's dialect


def signing_values(key: SigningKey) -> dict[str, Any]:
    """The column values of a signing key (its public JWK as JSON text)."""
    values = msgspec.structs.asdict(key)
    values["public_jwk"] = msgspec.json.encode(key.public_jwk).decode()
    return values


async def write(conn: Any, writes: Writes, upsert: Upsert) -> None:
    """Execute the writes on ``conn``; a stale policy activation raises ``Conflict`` and a transition whose
    row moved its own error (the caller's transaction then keeps nothing)."""
    for ident in writes.identities:
        values = msgspec.structs.asdict(ident)
        values["models"] = msgspec.json.encode(ident.models).decode()
        values["roles"] = msgspec.json.encode(ident.roles).decode()
        await conn.execute(upsert(t.identities, values))
    for key in writes.keys:
        await conn.execute(upsert(t.api_keys, msgspec.structs.asdict(key)))
    for key_id, at in writes.revocations:
        await conn.execute(update(t.api_keys).where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                           .values(revoked_at=at))
    for team in writes.teams:
        await conn.execute(upsert(t.teams, msgspec.structs.asdict(team), key="name"))
    for signing in writes.signing_keys:
        await conn.execute(upsert(t.signing_keys, signing_values(signing), key="kid"))
    for row in writes.policy_versions:
        await conn.execute(t.policy_versions.insert().values(**row))
    for row in writes.changesets:
        await conn.execute(upsert(t.policy_changesets, {k: v for k, v in row.items() if k != "seq"}))
    if writes.policy_activation is not None:
        version, expect = writes.policy_activation
        pa = t.policy_active
        done = await conn.execute(update(pa).where(pa.c.id == 1, pa.c.version == expect)
                                  .values(version=version, updated_at=clock.now()))
        if done.rowcount != 1:  # raised inside the transaction: nothing of this apply is kept
            raise Conflict("the active policy changed meanwhile; propose against the new version",
                           code="stale_policy")
    for table, key, values, where, otherwise in writes.transitions:
        done = await conn.execute(update(table).where(table.c.id == key, *where).values(**values))
        if done.rowcount != 1:  # raised inside the transaction: nothing of this apply is kept
            raise otherwise
    for table, row in writes.rows:
        await conn.execute(table.insert().values(**row))
    for table, where in writes.deletions:
        await conn.execute(delete(table).where(*where))


async def snapshot(conn: Any, writes: Writes) -> dict[str, list[dict[str, Any]]]:
    """The stored rows a batch of writes touches: what the audit entry's before/after hashes cover."""
    key_ids = sorted({k.id for k in writes.keys} | {kid for kid, _ in writes.revocations})
    out: dict[str, list[dict[str, Any]]] = {}
    for name, table, col, ids in (("identities", t.identities, "id", sorted({i.id for i in writes.identities})),
                                  ("keys", t.api_keys, "id", key_ids),
                                  ("teams", t.teams, "name", sorted({x.name for x in writes.teams})),
                                  ("signing_keys", t.signing_keys, "kid", sorted({k.kid for k in writes.signing_keys}))):
        if ids:
            rows = await conn.execute(select(table).where(table.c[col].in_(ids)).order_by(table.c[col]))
            out[name] = [dict(r._mapping) for r in rows]
    for table, key, *_ in writes.transitions:  # a tool approval: the row before and after its decision
        rows = await conn.execute(select(table).where(table.c.id == key))
        out.setdefault(table.name, []).extend(dict(r._mapping) for r in rows)
    return out
