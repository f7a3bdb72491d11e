"""A month of usage rows loaded on the Postgres server itself, into the real schema (issue 29's 100 million).

``SqlStore.write_usage`` from Python loads ~20-40k rows/s here, days for 100 million; this generates the rows
with ``generate_series`` on the server instead, an hour of them per statement, through the ledger's own
statement shape: ``rollups.postgres_insert_and_fold`` wraps the generating ``INSERT … SELECT`` exactly as it
wraps the writer's ``unnest`` insert, so the rollup rows are folded by the same SQL from the rows actually
inserted and equal the raw sums by construction (``verify`` checks one day anyway). Each day's partition is
made first by sluice's own ``usage_partitions.make``, so no row lands in the default partition.

The rows: ``rows`` spread evenly over ``[start of the UTC day 30 days ago, now)``; 200 identities with
skewed traffic (identity ``floor(200 u²)``: the busiest sends ~7%, the quietest ~0.04%), one key each, 8
teams, each identity on 2 of 6 models (route = model mod 4), one API per identity; 95% 200, 2% 429
(``rate_limited``), 2% 400, 1% 502; half streamed (with a TTFT); latency 20-3020 ms; tokens and cost from a
hash of the row number (deterministic: the same size loads the same rows).
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from sluice.store import rollups, usage_partitions

DAY = 86_400
DAYS = 30
COLUMNS = ("request_id", "ts", "identity_id", "key_id", "endpoint", "model", "upstream", "status", "prompt_tokens",
           "completion_tokens", "latency_ms", "ttft_ms", "upstream_ms", "stream", "usage_source", "error_code", "team",
           "route", "version", "cached_tokens", "cost_nanos", "api", "cache_creation_tokens")


def insert_sql(g_lo: int, g_hi: int, t0: float, step: float) -> str:
    """The generated rows ``g_lo <= g < g_hi`` (row g at ``t0 + (g + 0.5) * step``), skipping a repeated id."""
    values = (
        "'req_load' || g", f"{t0!r} + (g + 0.5) * {step!r}", "'id' || i", "'key' || i", "'chat.completions'",
        "'model' || m", "'up1'", "CASE WHEN r < 950 THEN 200 WHEN r < 970 THEN 429 WHEN r < 990 THEN 400 ELSE 502 END",
        "(h >> 4) % 4000", "(h2 >> 3) % 700", "20 + (h2 >> 12) % 3000 + ((h2 >> 3) & 7)::float8 / 8",
        "CASE WHEN (h2 >> 10) & 1 = 1 THEN 5 + (h2 >> 14) % 400 END", "18 + (h2 >> 12) % 3000",
        "(h2 >> 10) & 1 = 1", "'upstream'",
        "CASE WHEN r < 950 THEN NULL WHEN r < 970 THEN 'rate_limited' WHEN r < 990 THEN 'invalid_request' "
        "ELSE 'upstream_error' END",
        "'team' || (i % 8)", "'route' || (m % 4)", "'v1'", "(h >> 5) % 50", "((h >> 2) % 1000000) * 1000",
        "CASE WHEN i % 2 = 0 THEN 'chat' ELSE 'messages' END", "0")
    source = (f"(SELECT g, h, h2, r, i, (i + ((h >> 16) & 1)) % 6 AS m FROM (SELECT g, h, h2, h2 % 1000 AS r,"
              f" floor(200 * ((h & 65535)::float8 / 65536) * ((h & 65535)::float8 / 65536))::int AS i FROM (SELECT g,"
              f" (hashint8(g) & 2147483647)::int8 AS h, (hashint8(-g - 1) & 2147483647)::int8 AS h2"
              f" FROM generate_series({g_lo}::int8, {g_hi - 1}::int8) AS g) a) b) c")
    return (f"INSERT INTO usage ({', '.join(COLUMNS)}) SELECT {', '.join(values)} FROM {source}"
            f" ON CONFLICT (request_id, ts) DO NOTHING")


def span(now: float) -> tuple[float, float]:
    """The loaded range: from the start of the UTC day ``DAYS`` days ago to ``now``'s minute."""
    return float((int(now) // DAY - DAYS) * DAY), float(int(now) // 60 * 60)


async def load(store: Any, rows: int, now: float, report: Any = print, jobs: int = 2) -> dict:
    """``rows`` rows (and their rollups) over ``span(now)``, an hour per statement, ``jobs`` days at a time;
    what it took."""
    t0, t1 = span(now)
    step = (t1 - t0) / rows
    for day in range(int(t0) // DAY, int(t1) // DAY + 4):
        await usage_partitions.make(store.engine, day)
    edges = list(rollups.EDGES)
    first = lambda at: max(0, min(rows, math.ceil((at - t0) / step - 0.5)))  # noqa: E731  # row whose ts >= at
    days = list(range(int(t0) // DAY, math.ceil(t1 / DAY)))
    w0, done = time.perf_counter(), [0]
    last = [w0]

    async def worker(mine: list[int]) -> None:
        # a day per worker at a time: no two workers upsert the same hour's or day's rollup rows
        raw = await _raw(store)
        try:
            for day in mine:
                for a in range(max(int(t0), day * DAY), min(int(t1), (day + 1) * DAY), 3600):
                    lo, hi = first(a), first(min(a + 3600, t1))
                    if hi > lo:
                        n = await raw.fetchval(rollups.postgres_insert_and_fold(insert_sql(lo, hi, t0, step), 1), edges)
                        done[0] += n  # not ``+= await``: that reads the count before the await
                    if time.perf_counter() - last[0] > 60:
                        last[0] = time.perf_counter()
                        report(f"  loaded {done[0]:,} rows ({done[0] / (last[0] - w0):,.0f} rows/s)")
        finally:
            await raw.close()

    await asyncio.gather(*(worker(days[k::jobs]) for k in range(jobs)))
    raw = await _raw(store)
    load_s = time.perf_counter() - w0
    await raw.execute("ANALYZE usage")  # what autovacuum would have done by the time a month is there
    for table in rollups.TABLES.values():
        await raw.execute(f"VACUUM ANALYZE {table}")
    await raw.close()
    return {"rows": done[0], "load_s": load_s, "since": t0, "until": t1}


async def _raw(store: Any) -> Any:
    """A connection of asyncpg's own, outside the store's pool (long statements; no timeout)."""
    import asyncpg

    url = store._url.replace("postgresql+asyncpg://", "postgresql://").replace("postgresql+psycopg://", "postgresql://")
    return await asyncpg.connect(url, command_timeout=None)


async def verify(store: Any, day: int) -> int:
    """A day's rollups (every grain, every column but ``last_ts``) against a ``GROUP BY`` of its raw rows:
    raises if any differs; the number of day groups compared."""
    raw = await _raw(store)
    try:
        lo, hi = day * DAY, (day + 1) * DAY
        keys = [f"coalesce({k}, '')" for k in rollups.KEY]
        keys[rollups.KEY.index("status_class")] = "CASE WHEN status = 429 THEN 429 ELSE status / 100 * 100 END"
        hist = [f"count(*) FILTER (WHERE width_bucket(latency_ms, $1::float8[]) = {i})" for i in range(rollups.BUCKETS)]
        hist += [f"count(*) FILTER (WHERE width_bucket(ttft_ms, $1::float8[]) = {i})" for i in range(rollups.BUCKETS)]
        sums = ["count(*)", "count(*) FILTER (WHERE status >= 400)", "count(*) FILTER (WHERE stream)",
                *(f"sum({c})::bigint" for c in rollups.SUMS[3:])]
        ext = ["min(latency_ms)", "max(latency_ms)", "min(ttft_ms)", "max(ttft_ms)"]
        n = len(rollups.KEY)
        from_raw = (f"SELECT {', '.join(keys + sums + ext + hist)} FROM usage WHERE ts >= {lo} AND ts < {hi}"
                    f" GROUP BY {', '.join(str(i) for i in range(1, n + 1))}")
        values = [*rollups.SUMS, "lat_min", "lat_max", "ttft_min", "ttft_max", *rollups.LAT, *rollups.TTFT]
        for table, where in (("usage_day", f"bucket = {lo}"), ("usage_hour", f"bucket >= {lo} AND bucket < {hi}"),
                             ("usage_minute", f"bucket >= {lo} AND bucket < {hi}")):
            agg = [f"sum({v})::bigint" if v not in ("lat_min", "ttft_min", "lat_max", "ttft_max")
                   else f"{v[-3:]}({v})" for v in values]
            from_rollup = f"SELECT {', '.join(rollups.KEY)}, {', '.join(agg)} FROM {table} WHERE {where} GROUP BY {', '.join(rollups.KEY)}"
            diff = await raw.fetchval(f"SELECT count(*) FROM (({from_raw}) EXCEPT ALL ({from_rollup})"
                                      f" UNION ALL (({from_rollup}) EXCEPT ALL ({from_raw}))) d", list(rollups.EDGES))
            if diff:
                raise AssertionError(f"{table}: {diff} groups of day {day} differ from the raw rows")
        return await raw.fetchval(f"SELECT count(*) FROM usage_day WHERE bucket = {lo}")
    finally:
        await raw.close()
