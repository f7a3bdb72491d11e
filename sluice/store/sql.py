"""The SQL store: one implementation over SQLAlchemy Core for SQLite (embedded) and Postgres.

Every statement uses bound parameters; every call is bounded in time and turns driver and
connection failures into ``StoreUnavailable`` so no caller can hang on a dead database.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import msgspec
from sqlalchemy import event, func, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..core import clock
from ..core.errors import Conflict
from ..core.types import ApiKey, ChangeEvent, Identity, IdentityActivity, SigningKey, Team, UsageGroup, UsageRecord, UsageSummaryRow
from . import schema as t
from . import usage_reads
from .identity_changes import ChangeReads, Changes, record, touched
from .base import Journal, Store, StoreUnavailable, Subscription, Writes
from .migrate import MIGRATE_TIMEOUT_S, migrated
from .pg_listen import CHANNEL, listen
from .usage_rows import SqliteUsageRows, insert_sql, write_postgres, write_postgres_usage, write_sqlite_batch
from .writes import signing_values, snapshot, write

P = ParamSpec("P")
R = TypeVar("R")


def engine_url(url: str) -> str:
    """Map ``sqlite:///path`` and ``postgresql://...`` to their async drivers."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///"):]
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix):]
    if url.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        return url
    raise ValueError("store.url must start with sqlite:/// or postgresql://")


def _guarded(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Bound a store call in time and translate infrastructure failures."""

    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        self = args[0]
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), self._timeout)  # type: ignore[attr-defined]
        except IntegrityError:
            raise Conflict("the record conflicts with an existing one") from None
        except (SQLAlchemyError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
            raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None

    return call


def _identity(row: Any) -> Identity:
    return Identity(id=row.id, name=row.name, owner=row.owner, environment=row.environment,
                    models=msgspec.json.decode(row.models), created_at=row.created_at, created_by=row.created_by,
                    expires_at=row.expires_at, disabled_at=row.disabled_at, source=row.source,
                    team=row.team, roles=msgspec.json.decode(row.roles))


def _key(row: Any) -> ApiKey:
    return ApiKey(id=row.id, identity_id=row.identity_id, hash=row.hash, display=row.display,
                  created_at=row.created_at, created_by=row.created_by, expires_at=row.expires_at,
                  revoked_at=row.revoked_at, last_used_at=row.last_used_at, source=row.source, plane=row.plane)


_PAGE_ROWS = 2000  # rows per read of a long listing (SqlStore._paged)
_USAGE_FIELDS = tuple(f for f in UsageRecord.__struct_fields__)


def _day(days: Any) -> str | None:
    import datetime as dt

    return None if days is None else (dt.date(1970, 1, 1) + dt.timedelta(days=int(days))).isoformat()


def _usage(row: Any) -> UsageRecord:
    return UsageRecord(**{f: getattr(row, f) for f in _USAGE_FIELDS})


class SqlStore(Store):
    """SQLite through aiosqlite, or Postgres through asyncpg; migrated by Alembic at open."""

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self._url = engine_url(url)
        self._timeout = timeout
        self._engine: AsyncEngine | None = None
        # Set by the composition root: every change record then gets its audit entry in the same
        # transaction, and a change whose entry cannot be written is not written either.
        self.journal: Journal | None = None
        self.dialect = "sqlite" if self._url.startswith("sqlite") else "postgresql"
        self._usage_rows: SqliteUsageRows | None = None  # the ledger's SQLite writer (usage_rows.py)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreUnavailable("the store is not open")
        return self._engine

    def _create_engine(self) -> AsyncEngine:
        if self.dialect == "sqlite":
            path = self._url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self._url, connect_args={"timeout": self._timeout})

            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
                cur.close()

            return engine
        return create_async_engine(
            self._url, pool_pre_ping=True, pool_size=5, max_overflow=5, pool_timeout=self._timeout,
            connect_args={"timeout": self._timeout, "command_timeout": self._timeout},
        )

    async def open(self, *, migrate: bool = True) -> None:
        """Connect; with ``migrate`` (the server) bring the schema to head first. A reader that must
        not change the database (``sluice config check``) opens without it."""
        self._engine = self._create_engine()
        if migrate:
            await self._migrate()
        path = self._url.split(":///", 1)[1] if self.dialect == "sqlite" else ""
        if path and path != ":memory:":  # an in-memory database is the engine's own: no second connection
            self._usage_rows = SqliteUsageRows(path, self._timeout)

    async def _migrate(self) -> None:
        """The schema to head within ``MIGRATE_TIMEOUT_S``, not the store timeout (a backfill reads the ledger, a
        replica waits while another migrates); on Postgres on its own connection, statements unbounded."""
        own = self.dialect == "postgresql"
        engine = create_async_engine(self._url, poolclass=NullPool, connect_args={"timeout": self._timeout}) if own else self.engine
        try:
            await asyncio.wait_for(migrated(engine, own), MIGRATE_TIMEOUT_S)
        except (SQLAlchemyError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
            raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None
        finally:
            if own:
                await engine.dispose()

    async def close(self) -> None:
        if self._usage_rows is not None:
            self._usage_rows.close()
            self._usage_rows = None
        if self._engine is not None:
            await self._engine.dispose()
            self._engine = None

    @_guarded
    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    @_guarded
    async def schema_version(self) -> str | None:
        async with self.engine.connect() as conn:
            return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one_or_none()

    # identities
    def _insert(self, table: Any) -> Any:
        """An INSERT of this store's dialect (it knows ON CONFLICT)."""
        if self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert  # type: ignore[assignment]
        return insert(table)

    def _upsert(self, table: Any, values: dict[str, Any], key: str = "id") -> Any:
        stmt = self._insert(table).values(**values)
        return stmt.on_conflict_do_update(index_elements=[table.c[key]], set_={k: v for k, v in values.items() if k != key})

    @_guarded
    async def apply(self, writes: Writes, *changes: ChangeEvent, expect_version: int | None = None) -> None:
        await self._transact([(writes, changes)], expect_version)

    @_guarded
    async def apply_each(self, changes: Sequence[tuple[Writes, ChangeEvent]], *,
                         expect_version: int | None = None) -> None:
        await self._transact([(writes, (change,)) for writes, change in changes], expect_version)

    async def _transact(self, batches: list[tuple[Writes, Sequence[ChangeEvent]]], expect_version: int | None) -> None:
        async with self.engine.begin() as conn:
            audited = self.journal is not None and any(changes for _, changes in batches)
            if audited:  # the lock first: the "before" rows are then exactly what each change replaces
                await self.journal.lock(conn)  # type: ignore[union-attr]
            for writes, changes in batches:
                before = await snapshot(conn, writes) if audited and changes else None
                await write(conn, writes, self._upsert)
                for change in changes:
                    await conn.execute(t.changes.insert().values(**_change_values(change)))
                if audited and changes:
                    await self.journal.append(conn, changes, state=(before, await snapshot(conn, writes)))  # type: ignore[union-attr]
            # approvals alone bump nothing (no replica caches them), unless a planned write must be checked
            if expect_version is not None or any(writes.bumps_version for writes, _ in batches):
                await self._bump(conn, touched(writes for writes, _ in batches), expect_version)

    async def _bump(self, conn: Any, entities: set[tuple[str, str]], expect: int | None = None) -> None:
        """A new identity-state version; on Postgres the NOTIFY is delivered only if the transaction commits.
        With ``expect``, only from that version (the row lock makes the check and the bump one step). The
        ``entities`` changed are recorded under the new version (identity_changes.py)."""
        state = t.identity_state
        cond = (state.c.id == 1) if expect is None else (state.c.id == 1) & (state.c.version == expect)
        done = await conn.execute(update(state).where(cond).values(version=state.c.version + 1))
        if done.rowcount != 1:  # raised inside the transaction: nothing of this apply is kept
            raise Conflict("the stored state changed meanwhile; read it again", code="state_changed")
        # read back under the row's lock (no RETURNING: SQLite before 3.35 has none)
        version = (await conn.execute(select(state.c.version).where(state.c.id == 1))).scalar_one()
        await record(conn, version, entities, clock.now())
        if self.dialect == "postgresql":
            await conn.execute(text(f"NOTIFY {CHANNEL}"))

    @_guarded
    async def identity_version(self) -> int:
        async with self.engine.connect() as conn:
            q = select(t.identity_state.c.version).where(t.identity_state.c.id == 1)
            return int((await conn.execute(q)).scalar_one())

    async def identity_changes(self, after: int, upto: int) -> Changes | None:
        return await ChangeReads(self).changes(after, upto)

    async def identity_rows(self, identity_ids: Iterable[str], key_ids: Iterable[str]) -> tuple[dict[str, Identity | None], list[ApiKey]]:
        return await ChangeReads(self).rows(identity_ids, key_ids)

    async def subscribe(self, on_change: Callable[[], None]) -> Subscription | None:
        if self.dialect != "postgresql":
            return None
        return await listen("postgresql://" + self._url.split("://", 1)[1], self._timeout, on_change)

    @_guarded
    async def get_identity(self, identity_id: str) -> Identity | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.identities).where(t.identities.c.id == identity_id))).first()
        return _identity(row) if row else None

    @_guarded
    async def find_identity(self, name: str) -> Identity | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.identities).where(t.identities.c.name == name))).first()
        return _identity(row) if row else None

    async def list_identities(self, *, include_disabled: bool = False, source: str | None = None) -> list[Identity]:
        q = select(t.identities)
        if not include_disabled:
            q = q.where(t.identities.c.disabled_at.is_(None))
        if source is not None:
            q = q.where(t.identities.c.source == source)
        return await self._paged(q, t.identities.c.name, _identity)  # by name, as listed

    @_guarded
    async def _page(self, q: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list(await conn.execute(q))

    async def _paged(self, q: Any, key: Any, convert: Callable[[Any], R]) -> list[R]:
        """Every row of ``q`` in order of the unique column ``key``, read a page at a time, each page one store
        call within the store's timeout: 100,000 identities are fifty short reads, not one that outlasts the
        timeout (start-up failed, and every reload after it, at 100,000 on a busy machine: bench/scale.py),
        and the loop serves requests between them."""
        out: list[R] = []
        after = None
        while True:
            page = await self._page((q if after is None else q.where(key > after)).order_by(key).limit(_PAGE_ROWS))
            out += map(convert, page)
            self.paged_at = clock.monotonic()  # a long reload is progressing (IdentitySync.stale_for)
            if len(page) < _PAGE_ROWS:
                return out
            after = getattr(page[-1], key.name)

    # credentials
    @_guarded
    async def get_key(self, key_id: str) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.api_keys).where(t.api_keys.c.id == key_id))).first()
        return _key(row) if row else None

    async def list_keys(self, identity_id: str | None = None, *, source: str | None = None) -> list[ApiKey]:
        q = select(t.api_keys)
        if identity_id is not None:
            q = q.where(t.api_keys.c.identity_id == identity_id)
        if source is not None:
            q = q.where(t.api_keys.c.source == source)
        out = await self._paged(q, t.api_keys.c.id, _key)  # pages by the primary key, listed by age
        out.sort(key=lambda k: k.created_at)
        return out

    @_guarded
    async def revoke_key(self, key_id: str, at: float) -> bool:
        async with self.engine.begin() as conn:
            found = (await conn.execute(select(t.api_keys.c.id).where(t.api_keys.c.id == key_id))).first()
            await conn.execute(update(t.api_keys).where(t.api_keys.c.id == key_id, t.api_keys.c.revoked_at.is_(None))
                               .values(revoked_at=at))
            await self._bump(conn, {("key", key_id)})
        return found is not None

    @_guarded
    async def touch_keys(self, last_used: dict[str, float]) -> None:
        if not last_used:
            return
        from sqlalchemy import bindparam

        stmt = update(t.api_keys).where(t.api_keys.c.id == bindparam("kid")).values(last_used_at=bindparam("at"))
        async with self.engine.begin() as conn:
            await conn.execute(stmt, [{"kid": k, "at": v} for k, v in last_used.items()])

    # ledger
    @_guarded
    async def write_usage(self, records: Iterable[UsageRecord]) -> None:
        # idempotent: a record already written (same request id) is skipped, never doubled.
        # On the drivers themselves: this runs at the request rate (usage_rows.py says what it saves).
        batch = list(records)
        if not batch:
            return
        if self._usage_rows is not None:
            await self._usage_rows.write(batch)
        elif self.dialect == "postgresql":
            await write_postgres_usage(self.engine, batch)
        else:  # an in-memory SQLite: the same statements through the engine's own connection
            async with self.engine.begin() as conn:
                await conn.run_sync(lambda c: write_sqlite_batch(
                    lambda sql, p: c.exec_driver_sql(sql, p).fetchall(),
                    lambda sql, rows: c.exec_driver_sql(sql, rows) if rows else None, batch))

    async def insert_rows(self, table: Any, columns: tuple[str, ...], rows: list[tuple]) -> None:
        """Many rows of one table in one transaction, on the driver as usage rows are (another table written at
        the request rate: the tool decisions); through SQLAlchemy on an in-memory database."""
        if not rows:
            return
        if self._usage_rows is not None:
            await self._usage_rows.insert(insert_sql(table.name, columns, "sqlite"), rows)
        elif self.dialect == "postgresql":
            await write_postgres(self.engine, insert_sql(table.name, columns, "postgresql"), rows)
        else:
            async with self.engine.begin() as conn:
                await conn.execute(table.insert(), [dict(zip(columns, r)) for r in rows])

    @_guarded
    async def list_usage(self, *, since: float = 0.0, limit: int = 1000) -> list[UsageRecord]:
        q = select(t.usage).where(t.usage.c.ts >= since).order_by(t.usage.c.ts.desc(), t.usage.c.seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [_usage(r) for r in await conn.execute(q)]

    @_guarded
    async def summarize_usage(self, *, since: float = 0.0) -> list[UsageSummaryRow]:
        async with self.engine.connect() as conn:
            got = await usage_reads.sums(conn, ("identity", "model"), since, None)
        return [UsageSummaryRow(identity_id=k[0], model=k[1], requests=got[k][0], errors=got[k][1],
                                prompt_tokens=got[k][2], completion_tokens=got[k][3])
                for k in usage_reads.ordered(list(got), self.dialect)]

    @_guarded
    async def aggregate_usage(self, by: str, *, since: float = 0.0, until: float | None = None,
                              key_id: str | None = None) -> list[UsageGroup]:
        # from the rollups, and the raw rows of a minute not whole at either end (usage_reads.py)
        async with self.engine.connect() as conn:
            got = await usage_reads.sums(conn, (by,), since, until, key_id)
        return [UsageGroup(key=_day(k[0]) if by == "day" else k[0], **dict(zip(usage_reads.TOTALS, got[k])))
                for k in usage_reads.ordered(list(got), self.dialect)]

    @_guarded
    async def rollup_usage(self, by: Sequence[str], *, grain: str = "minute", since: float = 0.0,
                           until: float | None = None) -> list[usage_reads.UsageRollup]:
        async with self.engine.connect() as conn:
            return await usage_reads.merged(conn, by, grain, since, until)

    @_guarded
    async def identity_activity(self) -> list[IdentityActivity]:
        d = t.usage_day.c  # every day's rollup: as old as the ledger, whatever raw rows retention has dropped
        q = (select(d.identity_id, d.model, func.sum(d.requests).label("requests"), func.max(d.last_ts).label("last_at"))
             .where(d.identity_id != "").group_by(d.identity_id, d.model))
        async with self.engine.connect() as conn:
            return [IdentityActivity(identity_id=r.identity_id, model=r.model or None, requests=int(r.requests),
                                     last_at=r.last_at) for r in await conn.execute(q)]

    # teams
    @_guarded
    async def get_team(self, name: str) -> Team | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.teams).where(t.teams.c.name == name))).first()
        return Team(**row._mapping) if row else None

    @_guarded
    async def list_teams(self) -> list[Team]:
        async with self.engine.connect() as conn:
            return [Team(**r._mapping) for r in await conn.execute(select(t.teams).order_by(t.teams.c.name))]

    # token-signing keys
    @_guarded
    async def put_signing_key(self, key: SigningKey) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self._upsert(t.signing_keys, signing_values(key), key="kid"))

    @_guarded
    async def list_signing_keys(self) -> list[SigningKey]:
        q = select(t.signing_keys).order_by(t.signing_keys.c.created_at.desc())
        async with self.engine.connect() as conn:
            return [SigningKey(**{**r._mapping, "public_jwk": msgspec.json.decode(r.public_jwk)})
                    for r in await conn.execute(q)]

    # change log
    @_guarded
    async def record_change(self, event: ChangeEvent) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(t.changes.insert().values(**_change_values(event)))
            if self.journal is not None:
                await self.journal.append(conn, [event], state=None)

    @_guarded
    async def record_audit(self, event: ChangeEvent) -> None:
        if self.journal is None:
            raise StoreUnavailable("no audit journal")
        async with self.engine.begin() as conn:
            await self.journal.append(conn, [event], state=None, linked=False)

    @_guarded
    async def list_changes(self, *, limit: int = 1000) -> list[ChangeEvent]:
        q = select(t.changes).order_by(t.changes.c.seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [ChangeEvent(id=r.id, ts=r.ts, actor=r.actor, action=r.action, target=r.target,
                                source_ip=r.source_ip, detail=msgspec.json.decode(r.detail))
                    for r in await conn.execute(q)]

    # the routing document an older sluice kept (read once, to seed the first policy version)
    @_guarded
    async def load_routing(self) -> tuple[int, bytes] | None:
        q = select(t.routing_policy.c.version, t.routing_policy.c.document).where(t.routing_policy.c.id == 1)
        async with self.engine.connect() as conn:
            row = (await conn.execute(q)).first()
        return (int(row.version), row.document.encode()) if row else None

    # versioned policy
    @_guarded
    async def active_policy(self) -> int:
        async with self.engine.connect() as conn:
            got = (await conn.execute(select(t.policy_active.c.version).where(t.policy_active.c.id == 1))).scalar()
        return int(got or 0)

    @_guarded
    async def policy_version(self, version: int) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.policy_versions).where(t.policy_versions.c.id == version))).first()
        return dict(row._mapping) if row else None

    @_guarded
    async def list_policy_versions(self, *, limit: int = 100) -> list[dict]:
        pv = t.policy_versions
        q = select(*[c for c in pv.c if c.name != "document"]).order_by(pv.c.id.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]

    @_guarded
    async def changeset(self, changeset_id: str) -> dict | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(t.policy_changesets).where(t.policy_changesets.c.id == changeset_id))).first()
        return dict(row._mapping) if row else None

    @_guarded
    async def list_changesets(self, *, limit: int = 100) -> list[dict]:
        pc = t.policy_changesets
        q = select(*[c for c in pc.c if c.name != "document"]).order_by(pc.c.seq.desc()).limit(limit)
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(q)]


def _change_values(event: ChangeEvent) -> dict[str, Any]:
    values = msgspec.structs.asdict(event)
    values["detail"] = msgspec.json.encode(event.detail).decode()
    return values


class TableQueries:
    """Queries of some tables beside the ``Store`` interface (tool approvals, stored responses, ended MCP
    sessions) over a ``SqlStore``'s engine, each bounded by its timeout (``_guarded``)."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._timeout = store._timeout  # what ``_guarded`` bounds every query by

    @property
    def engine(self) -> Any:
        return self._store.engine
