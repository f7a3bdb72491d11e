"""Issue 29's acceptance at production volume: the usage readers over a month of rows on Postgres, and the
ledger's writes while a day's partition is exported and dropped.

    .venv/bin/python bench/usage_scale.py [--rows 1M|10M|100M] [--keep] [--reuse] [--batch 5000]
                                          [--skip readers,writes] [--json FILE]

Makes a throwaway database (``sluice_hist`` beside SLUICE_PG_URL's, default the machine's ``test``), lets
sluice migrate it, loads ``--rows`` rows over 30 days and their rollups on the server (``usage_load.py``),
checks one day's rollups against its raw rows, then against a real ``sluice serve`` on that database
(free ports) times, median of 5 after one cold request, from request to the last byte of the answer:
every ``by=`` of the summary over the last 30 days (``since`` = now - 30 days, ends not on a minute, so
the raw rows of the minute at each end are read too), the old per-identity-and-model summary, chargeback
as CSV and of one key, and the dashboard page (one server-rendered page: all its data is read for that
one request). Then the ledger's writer (``SqlStore.write_usage``, batches of 5,000 (``usage.batch_size``'s default on Postgres) one after another as
``UsageLedger`` sends them, records made beforehand) for ``--write-s`` seconds alone and while
``UsageRetention.run`` (from 1 s before it starts to its end) exports the oldest day (in its child process,
gzip JSON lines) and drops its partition: rows/s, the longest batch, and CPU per row of this process and of
the database's backends (read from /proc, so Postgres must run on this host for that column). Drops the database at the end unless ``--keep``.
Thresholds (issue 29): summary < 200 ms median, dashboard < 500 ms, >= 20,000 rows/s during retention.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "http"))

from sluice.core.config import Ledger  # noqa: E402
from sluice.core.types import UsageRecord  # noqa: E402
from sluice.store import usage_partitions  # noqa: E402
from sluice.store.sql import SqlStore  # noqa: E402
from sluice.store.usage_retention import UsageRetention  # noqa: E402
import usage_load  # noqa: E402

ADMIN = "sla_" + "a" * 36
BYS = ("identity", "key", "team", "model", "route", "api", "day")
SIZES = {"1M": 1_000_000, "10M": 10_000_000, "100M": 100_000_000}
LIMITS = {"summary": 200.0, "chargeback": 200.0, "dashboard": 500.0}
BATCHES = [5_000]  # rows per ledger batch: usage.batch_size's default on Postgres (--batch)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def sizes(store: SqlStore) -> dict[str, int]:
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        out = {}
        for name in ("usage", "usage_minute", "usage_hour", "usage_day"):
            n = (await conn.execute(text(f"SELECT count(*) FROM {name}"))).scalar_one() if name != "usage" else None
            size = (await conn.execute(text(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c WHERE c.oid = CAST(:n AS regclass)"
                " OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = CAST(:n AS regclass))"), {"n": name})).scalar()
            out[name] = (n, int(size or 0))
        return out


async def timed(client: httpx.AsyncClient, path: str, params: dict, headers: dict | None = None) -> tuple[float, float, int]:
    """(cold ms, median ms of 5, body bytes) of one GET, to the last byte."""
    times = []
    for _ in range(6):
        t0 = time.perf_counter()
        r = await client.get(path, params=params, headers=headers or {})
        body = r.content
        times.append(1000 * (time.perf_counter() - t0))
        if r.status_code != 200:
            raise SystemExit(f"{path} {params}: {r.status_code} {body[:300]!r}")
    return times[0], statistics.median(times[1:]), len(body)


async def readers(port: int, since: float, key: str) -> list[tuple[str, str, float, float, int]]:
    rows = []
    auth = {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, headers=auth) as client:
        for by in BYS:
            rows.append(("summary", f"by={by}", *await timed(client, "/admin/usage/summary", {"by": by, "since": since})))
        rows.append(("summary", "identity+model", *await timed(client, "/admin/usage/summary", {"since": since})))
        rows.append(("chargeback", "by=team csv", *await timed(
            client, "/admin/usage/summary", {"by": "team", "since": since, "format": "csv"})))
        rows.append(("chargeback", f"by=model key={key}", *await timed(
            client, "/admin/usage/summary", {"by": "model", "since": since, "key": key})))
        rows.append(("dashboard", "page", *await timed(client, "/admin/dashboard", {}, {"Accept": "text/html"})))
    return rows


def records(n: int, tag: str) -> list[UsageRecord]:
    """``n`` records of now, drawn as the loader draws its rows (usage_load.py: skewed identities, 2 models
    each, 95% 200)."""
    rng, now, out = random.Random(tag), time.time(), []
    for i in range(n):
        u, r = rng.random(), rng.randrange(1000)
        ident = int(200 * u * u)
        model = (ident + rng.getrandbits(1)) % 6
        status, code = (200, None) if r < 950 else (429, "rate_limited") if r < 970 else (
            (400, "invalid_request") if r < 990 else (502, "upstream_error"))
        stream = rng.random() < 0.5
        out.append(UsageRecord(
            request_id=f"req_w{tag}{i:010d}", ts=now + i * 1e-4, identity_id=f"id{ident}", key_id=f"key{ident}",
            endpoint="chat.completions", model=f"model{model}", upstream="up1", status=status,
            prompt_tokens=rng.randrange(4000), completion_tokens=rng.randrange(700), latency_ms=20.0 + rng.randrange(3000),
            ttft_ms=5.0 + rng.randrange(400) if stream else None, stream=stream, usage_source="upstream",
            error_code=code, team=f"team{ident % 8}", route=f"route{model % 4}", version="v1",
            api=("chat", "messages")[ident % 2], cached_tokens=rng.randrange(50), cost_nanos=rng.randrange(10**6) * 1000))
    return out


async def backends(url: str) -> dict[int, int]:
    """On-CPU ns of every client backend of the database (the server's side of the writes), by pid."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        pids = [r[0] for r in await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                                               " AND pid <> pg_backend_pid() AND backend_type = 'client backend'")]
    finally:
        await conn.close()
    out = {}
    for pid in pids:
        try:
            out[pid] = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # another host's Postgres, or gone
    return out


async def write_for(store: SqlStore, seconds: float, tag: str, until: asyncio.Event | None = None) -> dict:
    """The ledger's writes, one batch after another, for ``seconds`` (or until ``until`` is set); the time
    spent making records (what the requests did) is left out of the rate. Also the CPU per row of this
    process's writing and of the database's backends (all of them: during retention the export's too)."""
    url = store._url.replace("postgresql+asyncpg://", "postgresql://")
    pool, i, made = records(BATCHES[0] * 200, tag), 0, 0.0
    n, longest, cpu, t0 = 0, 0.0, 0.0, time.perf_counter()
    server0 = await backends(url)
    while (until is None and time.perf_counter() - t0 - made < seconds) or (until is not None and not until.is_set()):
        if i + BATCHES[0] > len(pool):
            m0 = time.perf_counter()
            pool, i = records(BATCHES[0] * 200, f"{tag}{n}"), 0
            made += time.perf_counter() - m0
        batch = pool[i: i + BATCHES[0]]
        i += BATCHES[0]
        b0, c0 = time.perf_counter(), time.process_time()
        await store.write_usage(batch)
        cpu += time.process_time() - c0
        longest = max(longest, time.perf_counter() - b0)
        n += len(batch)
    wall = time.perf_counter() - t0 - made
    server1 = await backends(url)
    server = sum(ns - server0.get(pid, 0) for pid, ns in server1.items())
    return {"rows": n, "s": wall, "rows_s": n / wall, "longest_ms": 1000 * longest, "sluice_us_row": 1e6 * cpu / max(n, 1),
            "server_us_row": server / 1000 / max(n, 1)}


async def writes(url: str, export_dir: str, seconds: float) -> dict:
    store = SqlStore(url, timeout=600)
    await store.open(migrate=False)
    try:
        alone = await write_for(store, seconds, "a")
        async with store.engine.connect() as conn:
            oldest = (await usage_partitions.days(conn))[0]
        # exactly the oldest day is past retention (a rerun with --reuse takes the next one)
        keep = int(time.time()) // 86400 - oldest - 1
        retention = UsageRetention(store, Ledger(raw_retention_days=keep, export_dir=export_dir))
        done = asyncio.Event()
        writer = asyncio.create_task(write_for(store, 0, "b", until=done))
        await asyncio.sleep(1.0)  # the writer is going before retention starts
        r0 = time.perf_counter()
        ran = await retention.run()
        ret_s = time.perf_counter() - r0
        done.set()
        during = await writer
        return {"alone": alone, "during": during, "retention_s": ret_s, "ran": ran}
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1M", help="1M, 10M, 100M or a number")
    ap.add_argument("--db", default="sluice_hist")
    ap.add_argument("--keep", action="store_true", help="leave the database (and reuse it with --reuse)")
    ap.add_argument("--reuse", action="store_true", help="measure a database loaded before (no load)")
    ap.add_argument("--write-s", type=float, default=20.0)
    ap.add_argument("--skip", default="", help="comma-separated: readers, writes")
    ap.add_argument("--json", help="also write the results to this file (bench/scale.py's usage-history row)")
    ap.add_argument("--batch", type=int, default=5_000, help="rows per ledger batch (usage.batch_size; its default on Postgres: 5,000)")
    ap.add_argument("--jobs", type=int, default=2, help="loader connections (a day each at a time)")
    a = ap.parse_args()
    rows = SIZES.get(a.rows) or int(a.rows)
    BATCHES[0] = a.batch
    asyncio.run(run(a, rows))


async def run(a: argparse.Namespace, rows: int) -> None:
    import asyncpg
    import json

    base = os.environ.get("SLUICE_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
    url = base.rsplit("/", 1)[0] + "/" + a.db
    admin = await asyncpg.connect(base, timeout=5)
    results: dict = {"rows": rows, "loadavg": [loadavg()]}
    print(f"# usage history at {rows:,} rows; load average {loadavg()}", flush=True)
    if not a.reuse:
        await admin.execute(f'DROP DATABASE IF EXISTS "{a.db}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{a.db}"')
    try:
        store = SqlStore(url, timeout=3600)
        await store.open()  # sluice's own migrations: the real schema
        if not a.reuse:
            got = await usage_load.load(store, rows, time.time(), lambda m: print(m, flush=True), a.jobs)
            results["load_s"] = got["load_s"]
            print(f"loaded {got['rows']:,} rows in {got['load_s']:.0f} s ({got['rows'] / got['load_s']:,.0f} rows/s);"
                  f" load average {loadavg()}", flush=True)
            day = int(got["since"]) // 86400 + 15
            print(f"day {day}: {await usage_load.verify(store, day):,} day groups; every grain's rollups equal the raw"
                  f" rows (sums, extremes, histograms)", flush=True)
        results["sizes"] = await sizes(store)
        for name, (n, size) in results["sizes"].items():
            print(f"  {name:13} {'' if n is None else f'{n:>12,} rows'} {size / 2**30:8.2f} GiB", flush=True)
        await store.close()
        with tempfile.TemporaryDirectory(prefix="sluice-hist-") as tmp:
            if "readers" not in a.skip:
                results["readers"] = await measure_readers(url, Path(tmp))
                results["loadavg"].append(loadavg())
            if "writes" not in a.skip:
                results["writes"] = await measure_writes(url, tmp, a.write_s)
                results["loadavg"].append(loadavg())
        if a.json:
            Path(a.json).write_text(json.dumps(results))
    finally:
        if not a.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{a.db}" WITH (FORCE)')
        await admin.close()


async def measure_readers(url: str, tmp: Path) -> list:
    from scale import Gateway

    gw = Gateway(tmp, {"store": {"url": url}, "ledger": {"raw_retention_days": 400}})
    gw.start()
    try:
        got = await readers(gw.control, time.time() - usage_load.DAYS * 86400, "key7")
    finally:
        gw.stop()
    print(f"\n{'reader':11} {'query':22} {'cold ms':>9} {'median ms':>10} {'bytes':>8}  threshold   (load average {loadavg()})")
    for kind, q, cold, med, size in got:
        limit = LIMITS[kind]
        print(f"{kind:11} {q:22} {cold:9.1f} {med:10.1f} {size:8,}  < {limit:.0f} ms: {'met' if med < limit else 'MISSED'}",
              flush=True)
    return got


async def measure_writes(url: str, tmp: str, seconds: float) -> dict:
    w = await writes(url, tmp, seconds)
    ran = w["ran"] or {}
    exported = sum(m["rows"] for m in ran.get("exported", []))
    print(f"\nledger writes (batches of {BATCHES[0]}), load average {loadavg()}")
    for name in ("alone", "during"):
        x = w[name]
        print(f"  {name:7} {x['rows']:>9,} rows in {x['s']:6.1f} s: {x['rows_s']:>9,.0f} rows/s,"
              f" longest batch {x['longest_ms']:7.1f} ms; CPU per row: sluice {x['sluice_us_row']:5.1f} µs,"
              f" Postgres {x['server_us_row']:6.1f} µs (one writer on an idle core: ~{1e6 / max(x['server_us_row'], 1e-9):,.0f} rows/s)")
    print(f"  retention: exported {exported:,} rows of {ran.get('dropped')} and dropped the partition in"
          f" {w['retention_s']:.1f} s; >= 20,000 rows/s during it: "
          f"{'met' if w['during']['rows_s'] >= 20_000 else 'MISSED'}", flush=True)
    return {"alone": w["alone"], "during": w["during"], "retention_s": w["retention_s"], "exported": exported}


if __name__ == "__main__":
    main()
