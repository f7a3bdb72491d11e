"""The usage ledger's batch insert, on the database driver itself (and any other table written at the request
rate: the tool decisions of MCP calls, ``insert_sql``).

Every data-plane request leaves one usage row, so this insert runs at the gateway's request rate.
Through SQLAlchemy Core it cost 38-57 µs of CPU per row on SQLite (aiosqlite: statement
compilation, parameter processing, and a thread hop with an eventfd wake-up per call) and 26-57
µs on Postgres; the drivers' own ``executemany`` with one prepared statement costs 15-19 µs
(SQLite, on one writer thread: a wake-up per batch) and 5-8 µs (asyncpg), measured with
``bench/ledger_rows.py``. The statement is the same on both: every field of ``UsageRecord`` in
declaration order, and a row whose request id is already there is skipped (the idempotency key
that lets the spill file be replayed). Everything else in the store stays on SQLAlchemy.

The same transaction adds the rows it inserted to the rollups (``rollups.py``): one upsert per group and
grain. Only rows actually inserted count, so a replayed spill file or a repeated id changes neither: on
SQLite the rows go in inside a savepoint, and only when fewer went in than were sent (a replay) is the
savepoint undone and the ids already stored read first (the transaction holds the file's write lock); on
Postgres one statement inserts the rows (``unnest`` arrays) and folds those it inserted into the rollups on
the server (``rollups.postgres_insert_and_fold``): 3.1 -> 14.1 µs of sluice's CPU per row when the client
folded and sent 147 values per group and grain, ~3 with the server folding (bench/README "Usage rollups").
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from operator import attrgetter
from typing import Any

import msgspec

from ..core.types import UsageRecord
from . import rollups
from .base import StoreUnavailable
from .schema import usage as _usage_table

FIELDS = UsageRecord.__struct_fields__
_COLUMNS = ", ".join(FIELDS)
_SKIP_REPEATS = "ON CONFLICT (request_id) DO NOTHING"
SQLITE_INSERT = f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))}) {_SKIP_REPEATS}"

astuple = msgspec.structs.astuple
_REQUEST_ID = attrgetter("request_id")
_PG_TYPES = {"String": "text", "Text": "text", "Float": "float8", "Integer": "int4", "BigInteger": "int8", "Boolean": "bool"}
# Postgres: the batch as one array per column (a repeat is skipped). The table is partitioned by ``ts``
# (migration 0016), so its unique key holds ``ts`` too: a replayed record keeps its time.
_SKIP_REPEATS_PG = "ON CONFLICT (request_id, ts) DO NOTHING"
POSTGRES_INSERT = (
    f"INSERT INTO usage ({_COLUMNS}) SELECT * FROM unnest("
    + ", ".join(f"${i}::{_PG_TYPES[type(_usage_table.c[f].type).__name__]}[]" for i, f in enumerate(FIELDS, 1))
    + f") {_SKIP_REPEATS_PG}")
ROLLUP_SQLITE = {t: rollups.upsert_sql(t, "qmark") for t in rollups.TABLES.values()}
# the raw rows and their rollups in one statement, folded by the server (rollups.postgres_insert_and_fold)
POSTGRES_INSERT_AND_FOLD = rollups.postgres_insert_and_fold(
    POSTGRES_INSERT, len(FIELDS) + 1)
_EDGES = list(rollups.EDGES)
_IN_CHUNK = 500  # ids per "already stored?" query on SQLite


# sqlite3 binds an exact int, float or str as it is, but sends any other value (None and bool too) through its
# adapter protocol: with no adapter registered it asks its protocol class for ``__adapt__``, which raises and
# formats an AttributeError, then the value for ``__conform__``: ~3,000 instructions a value, and a usage row has
# several (the fields a request did not set, ``stream``), 16k instructions per request (callgrind, make
# instructions). A registered adapter answers at the first look-up with what sqlite3 bound anyway (None is NULL,
# a bool its integer), so nothing stored changes, on any of the process's connections.
_NULL = {}.get  # None for any value, in C: a Python function's call would cost half of what the adapters save
sqlite3.register_adapter(type(None), _NULL)
sqlite3.register_adapter(bool, int)


def unique(records: list[UsageRecord]) -> list[UsageRecord]:
    """The batch without a second record of one request id (the first is the one the insert keeps)."""
    if len(set(map(_REQUEST_ID, records))) == len(records):  # the usual batch, in C
        return records
    seen: set[str] = set()
    out = []
    for r in records:
        if r.request_id not in seen:
            seen.add(r.request_id)
            out.append(r)
    return out


def write_sqlite_batch(query: Callable[[str, tuple], list], executemany: Callable[[str, list], object],
                       records: list[UsageRecord], changes: Callable[[], int] | None = None) -> None:
    """Inside an open write transaction: the rows not stored yet, then their rollups (one upsert per group and grain).

    With ``changes`` (the connection's ``total_changes``) the rows are inserted first in a savepoint: when
    every one went in (the case of every batch but a replayed spill file) no query asks which ids were
    already stored. Otherwise the savepoint is rolled back and the ids stored are read first.
    """
    fresh = unique(records)
    if changes is not None:
        query("SAVEPOINT usage_rows", ())
        before = changes()
        rows = list(map(astuple, fresh))
        executemany(SQLITE_INSERT, rows)
        if changes() - before == len(fresh):
            query("RELEASE usage_rows", ())
            _upsert_rollups(executemany, rows)
            return
        query("ROLLBACK TO usage_rows", ())
        query("RELEASE usage_rows", ())
    stored: set[str] = set()
    for i in range(0, len(fresh), _IN_CHUNK):
        ids = tuple(r.request_id for r in fresh[i: i + _IN_CHUNK])
        stored.update(row[0] for row in query(f"SELECT request_id FROM usage WHERE request_id IN ({', '.join('?' * len(ids))})", ids))
    if stored:
        fresh = [r for r in fresh if r.request_id not in stored]
    if not fresh:
        return
    rows = list(map(astuple, fresh))
    executemany(SQLITE_INSERT, rows)
    _upsert_rollups(executemany, rows)


def _upsert_rollups(executemany: Callable[[str, list], object], rows: list[tuple]) -> None:
    """The rollups of the rows just inserted (each the tuple the INSERT bound: ``rollups.fold`` reads those)."""
    for table, params in rollups.per_grain(rows):
        executemany(ROLLUP_SQLITE[table], params)


def insert_sql(table: str, columns: tuple[str, ...], dialect: str) -> str:
    """A plain INSERT of these columns (parameters in the driver's own style)."""
    marks = ", ".join("?" * len(columns)) if dialect == "sqlite" else ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


class SqliteUsageRows:
    """One stdlib connection on one thread: a batch is one transaction and one loop wake-up."""

    def __init__(self, path: str, timeout: float) -> None:
        self._path = path
        self._timeout = timeout
        self._db: sqlite3.Connection | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-usage-rows")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        return db

    def _insert(self, rows: list[tuple], statement: str) -> None:
        self._transact(lambda db: db.executemany(statement, rows))

    def _write(self, records: list[UsageRecord]) -> None:
        self._transact(lambda db: write_sqlite_batch(lambda sql, p: db.execute(sql, p).fetchall(), db.executemany, records,
                                                         lambda: db.total_changes))

    def _transact(self, work: Callable[[sqlite3.Connection], object]) -> None:
        if self._db is None:
            self._db = self._connect()
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # the connection may be unusable (a file swapped under it): the next batch reconnects
            self._db = None
            db.close()
            raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None

    async def write(self, records: list[UsageRecord]) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._write, records)

    async def insert(self, statement: str, rows: list[tuple]) -> None:
        """Rows of another table (``insert_sql``), on the same connection and thread: one writer of the file."""
        await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows, statement)

    def close(self) -> None:
        def shut() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        self._thread.submit(shut).result()
        self._thread.shutdown(wait=True)


async def write_postgres_usage(engine: Any, records: list[UsageRecord]) -> None:
    """The batch's rows and their rollups in one statement on a pooled asyncpg connection."""
    import asyncpg

    columns = [list(c) for c in zip(*map(astuple, unique(records)))]
    async with engine.connect() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        try:
            await raw.fetchval(POSTGRES_INSERT_AND_FOLD, *columns, _EDGES)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None


async def write_postgres(engine: Any, statement: str, rows: list[tuple]) -> None:
    """asyncpg's ``executemany`` on a pooled connection: one prepared statement, atomic per batch."""
    import asyncpg

    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        try:
            await raw.driver_connection.executemany(statement, rows)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None
