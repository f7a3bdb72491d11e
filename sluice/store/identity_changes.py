"""What each identity-state version changed, so a replica patches its registry instead of reloading it whole.

Every bump of the identity-state version (``SqlStore._bump``) writes, in its own transaction, one row per
identity, key and team its writes touched, or one ``none`` row when they touched none (a policy change): so
every version has at least one row, and a replica holding version V that reads the rows of V+1..V' can tell
whether it holds all of them. A gap (rows pruned by age, or written by something that bumped without
recording), a write it cannot follow (``all``) or a version that went backwards: it reloads whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec
from sqlalchemy import delete, select

from ..core.types import ApiKey, Identity
from . import schema as t
from .base import Writes

RETAIN_S = 86400.0  # a replica more than a day behind (a long outage) reloads whole
_CHUNK = 500  # ids per IN (...) of a read
_MOST = 20_000  # change rows read at once; more (a replica far behind a bulk change): reload whole, in pages
_TABLES = frozenset({"identities", "api_keys", "teams"})


class Changes(msgspec.Struct, frozen=True):
    """The identities, keys and teams changed in a run of versions (the ids as written, not the rows)."""

    identities: frozenset[str]
    keys: frozenset[str]
    teams: frozenset[str]


def touched(writes: Iterable[Writes]) -> set[tuple[str, str]]:
    """(kind, id) of every identity, key and team the writes change; ("all", "") for a write of those
    tables a replica cannot follow by id (a bare insert, transition or deletion of their rows)."""
    out: set[tuple[str, str]] = set()
    for w in writes:
        out.update(("identity", i.id) for i in w.identities)
        out.update(("key", k.id) for k in w.keys)
        out.update(("key", kid) for kid, _ in w.revocations)
        out.update(("team", team.name) for team in w.teams)
        tables = [table for table, _ in w.rows] + [table for table, *_ in w.transitions] + [table for table, _ in w.deletions]
        if any(getattr(table, "name", None) in _TABLES for table in tables):
            out.add(("all", ""))
    return out


async def record(conn: Any, version: int, entities: set[tuple[str, str]], now: float) -> None:
    """The rows of ``version`` (a ``none`` row when it changed nothing a replica holds), and the pruning of
    rows past ``RETAIN_S``: one indexed delete, nothing to do on almost every bump."""
    rows = [{"version": version, "kind": kind, "entity_id": entity, "ts": now}
            for kind, entity in sorted(entities or {("none", "")})]
    await conn.execute(t.identity_changes.insert(), rows)
    await conn.execute(delete(t.identity_changes).where(t.identity_changes.c.ts < now - RETAIN_S))


def since(rows: Iterable[Any], after: int, upto: int) -> Changes | None:
    """The changes of versions ``after``+1 .. ``upto`` from their rows (version, kind, entity_id), or None
    when they are not all there or one says reload whole."""
    seen: set[int] = set()
    ids: dict[str, set[str]] = {"identity": set(), "key": set(), "team": set(), "none": set()}
    for version, kind, entity in rows:
        if kind not in ids:  # "all", or a kind a newer release writes: reload whole
            return None
        seen.add(version)
        ids[kind].add(entity)
    if len(seen) != upto - after:  # the query reads only after+1 .. upto: all of them are there, or one is missing
        return None
    return Changes(frozenset(ids["identity"]), frozenset(ids["key"]), frozenset(ids["team"]))


class ChangeReads:
    """The reads of an incremental reload, on the SQL store's engine (each one bounded call)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def changes(self, after: int, upto: int) -> Changes | None:
        """What versions ``after``+1 .. ``upto`` changed, or None: reload whole."""
        if upto <= after:
            return None if upto < after else Changes(frozenset(), frozenset(), frozenset())
        c = t.identity_changes.c
        q = (select(c.version, c.kind, c.entity_id).where(c.version > after, c.version <= upto)
             .order_by(c.version).limit(_MOST + 1))
        rows = await self._store._page(q)
        return None if len(rows) > _MOST else since(rows, after, upto)

    async def rows(self, identity_ids: Iterable[str], key_ids: Iterable[str]) -> tuple[dict[str, Identity | None], list[ApiKey]]:
        """Every identity named (None: no longer stored) with every stored key of it, and every key named."""
        from sqlalchemy import or_

        from .sql import _identity, _key

        identity_ids, key_ids = sorted(set(identity_ids)), sorted(set(key_ids))
        k = t.api_keys.c
        keys: dict[str, ApiKey] = {}
        for lo in range(0, max(len(identity_ids), len(key_ids)), _CHUNK):
            q = select(t.api_keys).where(or_(k.id.in_(key_ids[lo:lo + _CHUNK]), k.identity_id.in_(identity_ids[lo:lo + _CHUNK])))
            keys.update((key.id, key) for key in map(_key, await self._store._page(q)))
        found = {i.id: i for i in map(_identity, await self._in(t.identities, t.identities.c.id, identity_ids))}
        return {iid: found.get(iid) for iid in identity_ids}, list(keys.values())

    async def _in(self, table: Any, col: Any, ids: Iterable[str]) -> list[Any]:
        ids = sorted(set(ids))
        out: list[Any] = []
        for lo in range(0, len(ids), _CHUNK):
            out += await self._store._page(select(table).where(col.in_(ids[lo:lo + _CHUNK])))
        return out
