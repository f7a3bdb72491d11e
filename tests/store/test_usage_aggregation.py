"""The ledger's aggregation on SQLite and Postgres alike: sums by identity, team, model, route and
UTC day equal the sums of the records (integer costs, so exactly), days are floored, not rounded,
and the window is [since, until)."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest

from sluice.core.types import UsageRecord
from sluice.store.sql import SqlStore

DAY = 86_400.0


@pytest.fixture()
async def store(store_url: str):
    s = SqlStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_sums_by_every_dimension_are_exact_and_days_are_floored(store):
    rnd = random.Random(13)
    # 19 Nov 2026 00:00 UTC, and times late in a day (a rounding cast would move them to the next)
    base = 1_795_046_400.0
    records = []
    for i in range(600):
        ts = base + (i % 3) * DAY + (DAY - 1.0 if i % 2 else 10.0)
        records.append(UsageRecord(
            request_id=f"r{i}", ts=ts, identity_id=f"id-{i % 7}", key_id=None, endpoint="chat.completions",
            model=rnd.choice(["a", "b", None]), upstream="u", status=rnd.choice([200, 200, 429, 502]),
            prompt_tokens=rnd.randint(0, 5000), completion_tokens=rnd.randint(0, 900), cached_tokens=rnd.randint(0, 50),
            team=rnd.choice(["red", "blue", None]), route=rnd.choice(["r1", "r2"]), version="v1",
            cost_nanos=rnd.randint(0, 10**12)))  # large: a float sum would lose the last digits
    await store.write_usage(records)
    day = lambda ts: ["2026-11-19", "2026-11-20", "2026-11-21"][int((ts - base) // DAY)]  # noqa: E731
    keys = {"identity": lambda r: r.identity_id, "team": lambda r: r.team, "model": lambda r: r.model,
            "route": lambda r: r.route, "day": lambda r: day(r.ts)}
    for by, key in keys.items():
        want: dict = defaultdict(lambda: [0, 0, 0, 0])
        for r in records:
            w = want[key(r)]
            w[0] += 1
            w[1] += r.status >= 400
            w[2] += r.prompt_tokens
            w[3] += r.cost_nanos
        got = {g.key: [g.requests, g.errors, g.prompt_tokens, g.cost_nanos] for g in await store.aggregate_usage(by)}
        assert got == dict(want), by
    window = await store.aggregate_usage("day", since=base + DAY, until=base + 2 * DAY)
    assert [g.key for g in window] == ["2026-11-20"]
    assert window[0].cost_nanos == sum(r.cost_nanos for r in records if day(r.ts) == "2026-11-20")
