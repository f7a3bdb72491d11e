"""CPU per usage row of the ledger's batch insert: SQLAlchemy Core (the old path) against the
drivers' own ``executemany`` (sluice/store/usage_rows.py), on SQLite and, if it answers, Postgres;
the same for the tool decision rows an MCP tools/call writes (``GuardRecords.record_decisions``).
Run: ``.venv/bin/python bench/ledger_rows.py`` (about 20 s). On Postgres it writes to a throwaway
database it creates and drops through SLUICE_PG_URL (default the machine's ``test`` database).
CPU is the process's own (all threads), so the SQLite writer thread counts."""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import tempfile
import time

import msgspec

from sluice.core.types import UsageRecord
from sluice.store import schema as t
from sluice.store.guard_records import DECISION_COLUMNS, GuardRecords, tool_decisions
from sluice.store.sql import SqlStore

_ids = itertools.count()
ROUNDS, BATCHES = 5, 10


def records(n: int) -> list[UsageRecord]:
    now = time.time()
    return [UsageRecord(request_id=f"req_bench{next(_ids):012x}", ts=now, identity_id="id_bench", key_id="key_bench",
                        endpoint="chat.completions", model="mock-model", upstream="mock", status=200, prompt_tokens=12,
                        completion_tokens=20, latency_ms=1.2, upstream_ms=0.8, usage_source="upstream", team="t",
                        route="r", cost_nanos=123) for _ in range(n)]


async def core_write(store: SqlStore, batch: list[UsageRecord]) -> None:
    """What write_usage did before: one SQLAlchemy executemany."""
    async with store.engine.begin() as conn:
        await conn.execute(store._insert(t.usage).on_conflict_do_nothing(index_elements=[t.usage.c.request_id]),
                           [msgspec.structs.asdict(r) for r in batch])


def decisions(n: int) -> list[dict]:
    """Rows as an MCP tools/call records them (sluice/mcp/usage.py)."""
    now = time.time()
    return [{"ts": now, "request_id": f"req_bench{next(_ids):012x}", "identity_id": "id_bench", "model": "mcp:files",
             "context_digest": "d" * 64, "tool": "files__get_weather", "call_id": "", "decision": "allow",
             "reason": "allowed", "args_masked": '{"city":"Paris"}', "args_sha256": "e" * 64, "approval_id": None,
             "approver": None, "policy_version": 1, "policy_hash": "f" * 64, "latency_ms": 1.2, "result_bytes": 120,
             "upstream_status": "ok", "tool_call_id": None, "result_masked": '{"content":[{"type":"text"}]}'}
            for _ in range(n)]


async def core_decisions(store: SqlStore, batch: list[dict]) -> None:
    """What record_decisions did before: one SQLAlchemy executemany."""
    async with store.engine.begin() as conn:
        await conn.execute(tool_decisions.insert(), batch)


async def measure(url: str, size: int, kind: str = "usage") -> dict[str, float]:
    store = SqlStore(url)
    await store.open()
    out: dict[str, list[float]] = {"sqlalchemy": [], "driver": []}
    make = records if kind == "usage" else decisions
    paths = ((("sqlalchemy", lambda b: core_write(store, b)), ("driver", store.write_usage)) if kind == "usage" else
             (("sqlalchemy", lambda b: core_decisions(store, b)), ("driver", GuardRecords(store).record_decisions)))
    assert DECISION_COLUMNS
    try:
        for _ in range(ROUNDS):
            for name, write in paths:
                batches = [make(size) for _ in range(BATCHES)]
                await write(make(size))  # warm
                c0 = time.process_time()
                for b in batches:
                    await write(b)
                out[name].append(1e6 * (time.process_time() - c0) / (BATCHES * size))
    finally:
        await store.close()
    return {k: statistics.median(v) for k, v in out.items()}


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        urls = [("sqlite", f"sqlite:///{d}/ledger.db")]
        admin = os.environ.get("SLUICE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
        scratch = f"sluice_bench_ledger_{os.getpid()}"
        urls.append(("postgres", admin.rsplit("/", 1)[0] + "/" + scratch))
        await pg_admin(admin, f'CREATE DATABASE "{scratch}"')
        print("rows       store     batch  SQLAlchemy µs/row  driver µs/row  ratio")
        for kind, sizes in (("usage", (100, 500)), ("decisions", (20, 100))):
            for name, url in urls:
                for size in sizes:
                    try:
                        m = await measure(url, size, kind)
                    except Exception as exc:  # Postgres not there: say so and go on
                        print(f"{kind:10} {name:9} skipped: {type(exc).__name__}")
                        break
                    print(f"{kind:10} {name:9} {size:5}  {m['sqlalchemy']:17.1f}  {m['driver']:13.1f}  "
                          f"{m['sqlalchemy'] / m['driver']:5.2f}")
        await pg_admin(admin, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')


async def pg_admin(url: str, sql: str) -> None:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return  # no Postgres: its rows print as skipped
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
