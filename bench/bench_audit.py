"""What the audit entry adds to a control-plane change: median and p99 of ``Store.apply`` (one key
write and its change record) with and without the audit journal, on SQLite (and Postgres when a
URL is given), and what `verify` costs per entry.

    .venv/bin/python bench/bench_audit.py [N] [postgresql://postgres@127.0.0.1:5432/test]

With a Postgres URL, each run gets a fresh database next to the one named (dropped after).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
import uuid

from sluice.audit import AuditLog, MerkleJournal
from sluice.core.audit_settings import Audit
from sluice.core.types import ApiKey, ChangeEvent
from sluice.store import Writes
from sluice.store.sql import SqlStore


async def run(url: str, n: int, audited: bool) -> tuple[float, float, float]:
    store = SqlStore(url)
    if audited:
        store.journal = MerkleJournal()
    await store.open()
    times = []
    try:
        for _ in range(n):
            kid = f"key-{uuid.uuid4().hex[:16]}"
            key = ApiKey(id=kid, identity_id="id-bench", hash=uuid.uuid4().hex, display="slk_…", created_at=time.time(),
                         created_by="bench")
            event = ChangeEvent(id=uuid.uuid4().hex, ts=time.time(), actor="bench", action="key.issue", target=kid)
            t0 = time.perf_counter()
            await store.apply(Writes().put_key(key), event)
            times.append((time.perf_counter() - t0) * 1000)
        verify_ms = 0.0
        if audited:
            t0 = time.perf_counter()
            report = await AuditLog(store, Audit(), None).verify()
            verify_ms = (time.perf_counter() - t0) * 1000 / max(report.size, 1)
            assert report.ok
    finally:
        await store.close()
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.99) - 1], verify_ms


async def fresh_pg(admin: str, name: str | None = None) -> str:
    import asyncpg

    conn = await asyncpg.connect(admin)
    try:
        if name is None:
            name = f"sluice_bench_{uuid.uuid4().hex[:10]}"
            await conn.execute(f'CREATE DATABASE "{name}"')
        else:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
    return admin.rsplit("/", 1)[0] + "/" + name


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    backends = ["sqlite"] + (["postgres"] if len(sys.argv) > 2 else [])
    for name in backends:
        for audited in (False, True):
            url = f"sqlite:///{tempfile.mkdtemp()}/bench.db" if name == "sqlite" else await fresh_pg(sys.argv[2])
            try:
                med, p99, per = await run(url, n, audited)
            finally:
                if name == "postgres":
                    await fresh_pg(sys.argv[2], url.rsplit("/", 1)[1])
            extra = f", verify {per * 1000:.0f} us/entry" if audited else ""
            print(f"{name:8} {'with' if audited else 'without':7} audit: apply median {med:.2f} ms, p99 {p99:.2f} ms{extra}")


if __name__ == "__main__":
    asyncio.run(main())
