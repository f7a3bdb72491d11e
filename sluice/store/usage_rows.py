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
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import msgspec

from ..core.types import UsageRecord
from .base import StoreUnavailable

FIELDS = UsageRecord.__struct_fields__
_COLUMNS = ", ".join(FIELDS)
_SKIP_REPEATS = "ON CONFLICT (request_id) DO NOTHING"
SQLITE_INSERT = f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join('?' * len(FIELDS))}) {_SKIP_REPEATS}"
POSTGRES_INSERT = f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join(f'${i}' for i in range(1, len(FIELDS) + 1))}) {_SKIP_REPEATS}"

astuple = msgspec.structs.astuple


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

    def _insert(self, rows: list[tuple], statement: str = SQLITE_INSERT) -> None:
        if self._db is None:
            self._db = self._connect()
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(statement, rows)
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
        rows = [astuple(r) for r in records]
        await asyncio.get_running_loop().run_in_executor(self._thread, self._insert, rows)

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


async def write_postgres(engine: Any, records: list[UsageRecord], statement: str = POSTGRES_INSERT,
                         rows: list[tuple] | None = None) -> None:
    """asyncpg's ``executemany`` on a pooled connection: one prepared statement, atomic per batch."""
    import asyncpg

    if rows is None:
        rows = [astuple(r) for r in records]
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        try:
            await raw.driver_connection.executemany(statement, rows)
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None
