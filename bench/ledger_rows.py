"""CPU per usage row of the ledger's batch insert: SQLAlchemy Core (the old path, raw rows only) against
the drivers' own ``executemany`` (sluice/store/usage_rows.py, with the rollups since issue 29), on SQLite
and, if it answers, Postgres, with rows per second of the driver path (wall clock, one writer); the same
for the tool decision rows an MCP tools/call writes (``GuardRecords.record_decisions``).
The usage rows spread over ``SLUICE_BENCH_GROUPS`` rollup groups (default 96: 16 identities, 3 models,
one request in 10 a 429; 1: every row the same group). Before/after: run it with PYTHONPATH at the
older checkout, then at this one.
Run: ``.venv/bin/python bench/ledger_rows.py`` (about 20 s). On Postgres it writes to a throwaway
database it creates and drops through SLUICE_PG_URL (default the machine's ``test`` database).
CPU is the process's own (all threads), so the SQLite writer thread counts; on Postgres the server's CPU for
the driver path (its backends for the scratch database, from /proc) is printed beside it, since the rollups
are folded by the server there."""

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


GROUPS = int(os.environ.get("SLUICE_BENCH_GROUPS", "96"))


def records(n: int) -> list[UsageRecord]:
    now = time.time()
    out = []
    for _ in range(n):
        i = next(_ids)
        g = i % GROUPS
        out.append(UsageRecord(
            request_id=f"req_bench{i:012x}", ts=now, identity_id=f"id_bench{g % 16}", key_id=f"key_bench{g % 16}",
            endpoint="chat.completions", model=f"mock-model{g // 16 % 3}", upstream="mock",
            status=429 if g // 48 % 2 and i % 10 == 0 else 200, prompt_tokens=12, completion_tokens=20,
            latency_ms=1.2 + i % 300, ttft_ms=0.5 + i % 50 if i % 2 else None, upstream_ms=0.8, stream=bool(i % 2),
            usage_source="upstream", team=f"t{g % 4}", route="r", api="chat", cost_nanos=123))
    return out


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
    out: dict[str, list[float]] = {"sqlalchemy": [], "driver": [], "rows/s": [], "server": []}
    make = records if kind == "usage" else decisions
    paths = ((("sqlalchemy", lambda b: core_write(store, b)), ("driver", store.write_usage)) if kind == "usage" else
             (("sqlalchemy", lambda b: core_decisions(store, b)), ("driver", GuardRecords(store).record_decisions)))
    assert DECISION_COLUMNS
    try:
        for _ in range(ROUNDS):
            for name, write in paths:
                batches = [make(size) for _ in range(BATCHES)]
                await write(make(size))  # warm
                s0 = await server_cpu(store)
                c0, w0 = time.process_time(), time.perf_counter()
                for b in batches:
                    await write(b)
                out[name].append(1e6 * (time.process_time() - c0) / (BATCHES * size))
                if name == "driver":
                    out["rows/s"].append(BATCHES * size / (time.perf_counter() - w0))
                    out["server"].append(1e6 * (await server_cpu(store) - s0) / (BATCHES * size))
    finally:
        await store.close()
    return {k: statistics.median(v) for k, v in out.items()}


async def server_cpu(store: SqlStore) -> float:
    """CPU seconds so far of the Postgres backends serving this store's database (0 on SQLite)."""
    if store.dialect != "postgresql":
        return 0.0
    async with store.engine.connect() as conn:
        pids = (await conn.exec_driver_sql(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars().all()
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a backend that ended meanwhile
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        urls = [("sqlite", f"sqlite:///{d}/ledger.db")]
        admin = os.environ.get("SLUICE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
        scratch = f"sluice_bench_ledger_{os.getpid()}"
        urls.append(("postgres", admin.rsplit("/", 1)[0] + "/" + scratch))
        await pg_admin(admin, f'CREATE DATABASE "{scratch}"')
        print(f"usage rows over {GROUPS} rollup groups")
        print("rows       store     batch  SQLAlchemy µs/row  driver µs/row  ratio  driver rows/s  server µs/row")
        for kind, sizes in (("usage", (100, 500)), ("decisions", (20, 100))):
            for name, url in urls:
                for size in sizes:
                    try:
                        m = await measure(url, size, kind)
                    except Exception as exc:  # Postgres not there: say so and go on
                        print(f"{kind:10} {name:9} skipped: {type(exc).__name__}")
                        break
                    print(f"{kind:10} {name:9} {size:5}  {m['sqlalchemy']:17.1f}  {m['driver']:13.1f}  "
                          f"{m['sqlalchemy'] / m['driver']:5.2f}  {m['rows/s']:12,.0f}  {m['server']:13.1f}")
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
