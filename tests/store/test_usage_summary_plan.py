"""How the usage summary reads the rollups on Postgres (issue 29's acceptance: every ``by=`` of a 30-day summary
under 200 ms at 100 million rows, bench/usage_scale.py): from ``ix_usage_<grain>_sums`` alone (migration 0019),
an index-only scan, never the ~1.2 KB rollup rows with their histograms, which an upserted day or hour table
holds in about a page each."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event, text

from sluice.core.types import UsageRecord
from sluice.store import rollups
from pg_databases import scratch_store

DAY = 86_400
NOW = 20_411 * DAY + 43_200.5  # noon (and a half second) of 19 Nov 2025


@pytest.fixture
async def pg_store(tmp_path):
    async for s in scratch_store("postgres", tmp_path):
        yield s


def traffic() -> list[UsageRecord]:
    """Forty days of rows every 20 minutes and a few groups, so every grain has rows in a 30-day range."""
    out = []
    for i in range(40 * 72):
        ts = NOW - 40 * DAY + i * 1200 + 7.25
        out.append(UsageRecord(request_id=f"r{i}", ts=ts, identity_id=f"id{i % 5}", key_id=f"k{i % 5}",
                               endpoint="chat.completions", model=f"m{i % 3}", upstream="up", status=200 if i % 9 else 500,
                               prompt_tokens=i % 50, completion_tokens=3, latency_ms=10.0 + i % 90, stream=False,
                               usage_source="upstream", team=f"t{i % 2}", route="r", version="v", api="chat",
                               cost_nanos=1000 + i))
    return out


@pytest.mark.parametrize("by", ["identity", "key", "team", "model", "route", "api", "day"])
async def test_every_summary_reads_the_rollups_by_an_index_only_scan(pg_store, by: str) -> None:
    await pg_store.write_usage(traffic())
    async with pg_store.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for table in rollups.TABLES.values():
            await conn.execute(text(f"VACUUM ANALYZE {table}"))
    seen: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):
        if "usage_minute" in statement or "usage_hour" in statement or "usage_day" in statement:
            seen.append((statement, parameters))

    event.listen(pg_store.engine.sync_engine, "before_cursor_execute", capture)
    try:
        groups = await pg_store.aggregate_usage(by, since=NOW - 30 * DAY, until=NOW)
    finally:
        event.remove(pg_store.engine.sync_engine, "before_cursor_execute", capture)
    assert sum(g.requests for g in groups) == 30 * 72  # every row of the 30 days, read from the rollups
    read = {name for s, _ in seen for name in rollups.TABLES.values() if f"FROM {name}" in s}
    assert read == set(rollups.TABLES.values())  # days, and the hours and minutes at the ends
    async with pg_store.engine.connect() as conn:
        # the tables are small here: the planner would scan them whole; what matters is that the index alone answers
        await conn.execute(text("SET enable_seqscan = off"))
        for statement, parameters in seen:
            driver = (await conn.get_raw_connection()).driver_connection
            plan = await driver.fetchval("EXPLAIN (FORMAT JSON) " + statement, *parameters)
            plan = json.loads(plan) if isinstance(plan, str) else plan
            nodes, todo = [], [plan[0]["Plan"]]
            while todo:
                node = todo.pop()
                nodes.append(node)
                todo.extend(node.get("Plans", []))
            scans = [(n["Node Type"], n.get("Index Name")) for n in nodes if "Scan" in n["Node Type"]]
            assert scans and all(kind == "Index Only Scan" and name.endswith("_sums") for kind, name in scans), (statement, scans)
