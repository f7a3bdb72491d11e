"""The ledger writes a backlog in batches sized for its store: 5,000 records on Postgres (whose server folds each
batch's rollups, cheaper per row in bigger batches), 500 on SQLite, or ``usage.batch_size`` when configured; every
record is written once whatever the batch (the store's rows counted, on real SQLite and Postgres)."""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from sqlalchemy import func, select

from sluice.core import config as cfgmod
from sluice.core.types import UsageRecord
from sluice.store import schema as t
from sluice.telemetry import Metrics, UsageLedger

from store.pg_databases import scratch_store


def test_the_batch_is_the_stores_unless_configured():
    usage = cfgmod.Usage()
    assert cfgmod.usage_batch(usage, "postgresql://127.0.0.1/test") == cfgmod.POSTGRES_BATCH == 5_000
    assert cfgmod.usage_batch(usage, "sqlite:///x.db") == cfgmod.SQLITE_BATCH == 500
    given = msgspec.convert({"batch_size": 64}, cfgmod.Usage)
    assert cfgmod.usage_batch(given, "postgresql://127.0.0.1/test") == 64


def _records(n: int) -> list[UsageRecord]:
    now = time.time()
    return [UsageRecord(request_id=f"req_batch{i:08d}", ts=now + i * 1e-4, identity_id="id1", key_id="k1",
                        endpoint="chat.completions", model="m", upstream="u", status=200, prompt_tokens=3,
                        completion_tokens=2, latency_ms=5.0) for i in range(n)]


async def _backlog(store, url: str, n: int) -> list[int]:
    """Queue ``n`` records at once and flush them as the gateway's ledger would: the sizes of the writes."""
    sizes: list[int] = []

    async def write(records):
        batch = list(records)
        sizes.append(len(batch))
        await store.write_usage(batch)

    async def nothing(*_):
        return None

    ledger = UsageLedger(cfgmod.Usage(), Metrics(), write, nothing, lambda: {},
                         batch_size=cfgmod.usage_batch(cfgmod.Usage(), url))
    for rec in _records(n):
        ledger.record(rec)
    assert await ledger.flush()
    async with store.engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(t.usage))).scalar() == n  # each once
    return sizes


@pytest.mark.parametrize(("kind", "n", "sizes"), [("sqlite", 6_000, [500] * 12), ("postgres", 12_000, [5_000, 5_000, 2_000])])
def test_a_backlog_is_written_in_the_stores_batches(kind, n, sizes, tmp_path):
    async def run():
        async for store in scratch_store(kind, tmp_path):
            url = "postgresql://" if store.dialect == "postgresql" else "sqlite:///"
            return await _backlog(store, url, n)

    assert asyncio.run(run()) == sizes
