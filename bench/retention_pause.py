"""How much a usage retention run on SQLite holds the event loop (issue 29: "a retention run on SQLite with 5
million rows never pauses a request by more than 10 ms").

A SQLite store gets ``--rows`` usage rows spread evenly over ``--days`` days ending now (written straight into
a new file by one SQL statement); ``ledger.raw_retention_days`` is
``--keep``, so the older days' rows (a quarter of them with the defaults: 1.25 million) are exported to
gzip JSON lines and deleted, while in the same process the ledger keeps writing (a batch of 500 every 0.25 s,
2,000 rows/s) and a ticker sleeps 1 ms at a time. Printed for an idle stretch of the same process (the writer
only) and for the run: each tick's wall-clock overshoot (what a request would wait; on a loaded machine the
other processes' share of it is large, hence the idle line beside it) and the event-loop thread's own CPU time
between two ticks (what the loop itself was kept busy with, which other processes do not stretch); the
longest ledger batch write and the rows written during the run.

    python bench/retention_pause.py                     # 5,000,000 rows (about 2 GB in /tmp; ~10 min)
    python bench/retention_pause.py --rows 200000       # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sluice.core.config import Ledger  # noqa: E402
from sluice.core.types import UsageRecord  # noqa: E402
from sluice.store.sql import SqlStore  # noqa: E402
from sluice.store.usage_retention import UsageRetention  # noqa: E402

DAY = 86_400
_FILL = """
INSERT INTO usage (request_id, ts, identity_id, key_id, endpoint, model, upstream, status, prompt_tokens,
                   completion_tokens, latency_ms, ttft_ms, upstream_ms, stream, usage_source, error_code, team, route,
                   version, cached_tokens, cost_nanos, api, cache_creation_tokens)
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :rows - 1)
SELECT 'bench-' || i, :t0 + i * :step, 'id-' || (i % 50), 'key-' || (i % 100), 'chat.completions', 'm' || (i % 4),
       'sim', CASE WHEN i % 20 = 0 THEN 429 ELSE 200 END, 100 + i % 900, 10 + i % 200, 5.0 + (i % 1000) / 10.0,
       NULL, NULL, i % 2, 'upstream', NULL, 'team-' || (i % 5), 'r1', 'v1', 0, 1000 + i, 'chat', 0 FROM n
"""


def stats(xs: list[float]) -> str:
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * (len(xs) - 1)))] * 1000  # noqa: E731
    return f"p50 {q(.5):6.2f}  p99 {q(.99):6.2f}  p99.9 {q(.999):6.2f}  max {q(1):7.2f} ms  ({len(xs)} ticks)"


async def fill(url: str, path: Path, rows: int, days: int, now: float) -> None:
    s = SqlStore(url)
    await s.open()  # the schema, migrated
    await s.close()
    t0 = (int(now // DAY) - days + 1) * DAY
    db = sqlite3.connect(path)
    start = time.perf_counter()
    with db:
        db.execute(_FILL, {"rows": rows, "t0": t0, "step": (now - t0) / rows})
    db.close()
    print(f"filled {rows:,} rows over {days} days in {time.perf_counter() - start:.0f} s", flush=True)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="sluice-retention-", dir=args.dir))
    path, export = work / "store.db", work / "export"
    url = f"sqlite:///{path}"
    now = time.time()
    await fill(url, path, args.rows, args.days, now)
    store = SqlStore(url)
    await store.open()
    gc.collect()
    gc.freeze()  # as the gateway does once started
    wall: list[float] = []
    cpu: list[float] = []
    writes: list[float] = []
    n = 0

    async def tick() -> None:
        while True:
            w, c = time.perf_counter(), time.thread_time()
            await asyncio.sleep(0.001)
            wall.append(time.perf_counter() - w - 0.001)
            cpu.append(time.thread_time() - c)

    async def write() -> None:
        nonlocal n
        while True:
            batch = [UsageRecord(request_id=f"live-{n}-{i}", ts=time.time(), identity_id="id-1", key_id="key-1",
                                 endpoint="chat.completions", model="m1", upstream="sim", status=200, prompt_tokens=10,
                                 completion_tokens=5, latency_ms=12.0, usage_source="upstream") for i in range(500)]
            t = time.perf_counter()
            await store.write_usage(batch)
            writes.append(time.perf_counter() - t)
            n += 1
            await asyncio.sleep(0.25)

    tasks = [asyncio.create_task(tick()), asyncio.create_task(write())]
    await asyncio.sleep(args.idle)
    idle_wall, idle_cpu, wall[:], cpu[:], writes[:] = wall[:], cpu[:], [], [], []
    before = n
    start = time.perf_counter()
    done = await UsageRetention(store, Ledger(raw_retention_days=args.keep, export_dir=str(export))).run(now)
    took = time.perf_counter() - start
    for t in tasks:
        t.cancel()
    exported = sum(m["rows"] for m in done["exported"])
    size = sum(f.stat().st_size for f in export.glob("*.jsonl.gz"))
    print(f"retention run: {len(done['dropped'])} days, {exported:,} rows exported ({size / 1e6:.0f} MB jsonl.gz) and"
          f" deleted in {took:.1f} s; ledger wrote {(n - before) * 500:,} rows meanwhile,"
          f" longest batch {max(writes) * 1000:.0f} ms")
    print(f"idle  loop wall overshoot: {stats(idle_wall)}")
    print(f"run   loop wall overshoot: {stats(wall)}")
    print(f"idle  loop-thread CPU per tick: {stats(idle_cpu)}")
    print(f"run   loop-thread CPU per tick: {stats(cpu)}")
    await store.close()
    shutil.rmtree(work)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--days", type=int, default=40)
    ap.add_argument("--keep", type=int, default=30, help="ledger.raw_retention_days")
    ap.add_argument("--idle", type=float, default=20.0, help="seconds of the idle stretch measured first")
    ap.add_argument("--dir", help="where the SQLite file and the export go (default: the temp directory)")
    asyncio.run(main(ap.parse_args()))
