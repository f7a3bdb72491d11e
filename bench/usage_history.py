"""The usage summary over a long history: raw rows against rollups (issue 29).

Loads ``--rows`` usage records (default 1,000,000) spread over 30 days into a fresh store through the
ledger's own writer (``SqlStore.write_usage``: raw rows and rollups, batches of 5,000), with 200
identities in 8 teams, 6 models, 4 routes, 2 APIs, one request in 20 an error; then times, median of 3,
the summary of the whole 30 days for every ``by=`` as sluice answers it now (rollups, plus raw rows for an
end that is not a whole minute) against the single raw-row ``GROUP BY`` it ran before, and the dashboard's
minute rollups of the last hour against the raw rows it listed before. Both answers are checked equal.

Run: ``.venv/bin/python bench/usage_history.py [--rows N] [--store sqlite|postgres|both]`` (1M rows: a few
minutes per store). Postgres: a throwaway database through SLUICE_PG_URL (default the machine's ``test``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time

from sqlalchemy import func, select

from sluice.core.types import UsageRecord
from sluice.store import schema as t
from sluice.store.sql import SqlStore

DAYS = 30


def batch(start: int, n: int, t0: float, total: int) -> list[UsageRecord]:
    out = []
    for i in range(start, start + n):
        h = (i * 2654435761) % 2**32  # spread the groups without a random generator's cost
        status = (500, 429, 400)[h % 3] if h % 20 == 0 else 200
        out.append(UsageRecord(
            request_id=f"req_hist{i:012x}", ts=t0 + DAYS * 86400 * i / total, identity_id=f"id{h % 200}",
            key_id=f"key{h % 200}", endpoint="chat.completions", model=f"model{h % 6}", upstream="u", status=status,
            prompt_tokens=h % 4000, completion_tokens=h % 700, latency_ms=20 + h % 3000,
            ttft_ms=(5 + h % 400) if h % 2 else None, stream=bool(h % 2), usage_source="upstream",
            team=f"team{h % 200 % 8}", route=f"route{h % 4}", version="v1", api=("chat", "messages")[h % 2],
            cached_tokens=h % 50, cost_nanos=h % 10**9))
    return out


async def raw_summary(store: SqlStore, by: str, since: float, until: float) -> dict:
    """What ``aggregate_usage`` ran before issue 29: one GROUP BY over the raw rows of the range."""
    u = t.usage.c
    if by == "day":
        key = func.floor(u.ts / 86400) if store.dialect == "postgresql" else func.cast(u.ts / 86400, u.prompt_tokens.type)
    else:
        key = {"identity": u.identity_id, "key": u.key_id, "team": u.team, "model": u.model, "route": u.route,
               "api": u.api}[by]
    errors = func.sum(func.cast(u.status >= 400, u.prompt_tokens.type))
    q = (select(key, func.count(), errors, func.sum(u.prompt_tokens), func.sum(u.completion_tokens),
                func.sum(u.cached_tokens), func.sum(u.cost_nanos))
         .where(u.ts >= since, u.ts < until).group_by(key))
    async with store.engine.connect() as conn:
        return {(None if r[0] is None else int(r[0]) if by == "day" else r[0]): [int(x or 0) for x in r[1:]]
                for r in await conn.execute(q)}


async def timed(fn, *args, **kw) -> tuple[float, object]:
    times, got = [], None
    for _ in range(3):
        t0 = time.perf_counter()
        got = await fn(*args, **kw)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times), got


async def run(url: str, name: str, rows: int) -> None:
    store = SqlStore(url, timeout=600)
    await store.open()
    try:
        t0 = (int(time.time()) // 86400 - DAYS) * 86400
        c0, w0 = time.process_time(), time.perf_counter()
        for start in range(0, rows, 5000):
            await store.write_usage(batch(start, min(5000, rows - start), t0, rows))
        load_s = time.perf_counter() - w0
        print(f"{name}: loaded {rows:,} rows in {load_s:.0f} s ({rows / load_s:,.0f} rows/s, "
              f"{1e6 * (time.process_time() - c0) / rows:.1f} µs CPU/row in this process)")
        async with store.engine.connect() as conn:
            counts = {tb.name: (await conn.execute(select(func.count()).select_from(tb))).scalar()
                      for tb in (t.usage_minute, t.usage_hour, t.usage_day)}
        print(f"{name}: rollup rows {counts}")
        since, until = t0 + 0.5, t0 + DAYS * 86400 + 0.5  # ends not on a minute: the edges read raw rows too
        print(f"{'store':9} {'by':9} {'raw ms':>9} {'rollups ms':>11} {'speed-up':>9}")
        for by in ("identity", "key", "team", "model", "route", "api", "day"):
            raw_ms, raw = await timed(raw_summary, store, by, since, until)
            roll_ms, groups = await timed(store.aggregate_usage, by, since=since, until=until)
            mine = {g.key: [g.requests, g.errors, g.prompt_tokens, g.completion_tokens, g.cached_tokens, g.cost_nanos]
                    for g in groups}
            if by == "day":
                import datetime as dt
                raw = {(dt.date(1970, 1, 1) + dt.timedelta(days=k)).isoformat(): v for k, v in raw.items()}
            assert mine == raw, by
            print(f"{name:9} {by:9} {raw_ms:9.1f} {roll_ms:11.1f} {raw_ms / roll_ms:8.1f}x")
        hour = t0 + DAYS * 86400 - 3600
        raw_ms, _ = await timed(store.list_usage, since=hour, limit=50_000)
        roll_ms, _ = await timed(store.rollup_usage, ("bucket", "status_class", "error_code"), since=hour)
        print(f"{name:9} {'dashboard':9} {raw_ms:9.1f} {roll_ms:11.1f} {raw_ms / roll_ms:8.1f}x  (last hour: rows listed / minute rollups)")
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--store", choices=("sqlite", "postgres", "both"), default="both")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        if a.store in ("sqlite", "both"):
            await run(f"sqlite:///{d}/history.db", "sqlite", a.rows)
        if a.store in ("postgres", "both"):
            import asyncpg

            admin = os.environ.get("SLUICE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
            scratch = f"sluice_bench_history_{os.getpid()}"
            conn = await asyncpg.connect(admin, timeout=5)
            await conn.execute(f'CREATE DATABASE "{scratch}"')
            try:
                await run(admin.rsplit("/", 1)[0] + "/" + scratch, "postgres", a.rows)
            finally:
                await conn.execute(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)')
                await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
