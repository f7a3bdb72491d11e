"""The usage rollups on SQLite and Postgres: over random batches (repeated request ids, errors, streams, cache
hits, latencies below and above the histograms' range, times on and around minute, hour and day edges)
every minute, hour and day row equals what the raw rows it covers sum to, exactly; the summary's every
``by=`` over any ``[since, until)`` equals the sums of the raw rows in it; percentiles from the histograms
stay within the documented bound."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from sluice.core.types import UsageRecord
from sluice.store import rollups
from sluice.store import schema as t
from sluice.store.sql import SqlStore

DAY = 86_400
BASE = 1_795_046_400  # 19 Nov 2026 00:00 UTC
_examples = itertools.count()


@pytest.fixture(scope="module")
async def store(request, tmp_path_factory):
    from pg_databases import scratch_store

    async for s in scratch_store(request.param, tmp_path_factory.mktemp("rollups")):
        yield s


def pytest_generate_tests(metafunc):
    if "store" in metafunc.fixturenames:
        metafunc.parametrize("store", ["sqlite", "postgres"], indirect=True, scope="module")


_offset = st.one_of(st.floats(0, 2 * DAY - 1e-6),  # anywhere in two days
                    st.integers(0, 2 * DAY // 60 - 1).map(lambda m: m * 60.0),  # on a minute edge
                    st.integers(1, 2 * DAY // 60 - 1).map(lambda m: math.nextafter(m * 60.0, 0)))  # just before one
_ms = st.one_of(st.floats(0, 5), st.floats(0, 3_000_000), st.sampled_from([1.0, 2 ** (1 / 3), 2.0 ** 20, 0.0]))
_record = st.fixed_dictionaries({
    "id": st.integers(0, 40), "offset": _offset,
    "identity_id": st.sampled_from([None, "id-a", "id-b"]), "key_id": st.sampled_from([None, "key-1", "key-2"]),
    "team": st.sampled_from([None, "red", "blue"]), "model": st.sampled_from([None, "m1", "m2"]),
    "version": st.sampled_from([None, "v1", "v2"]), "route": st.sampled_from([None, "r1"]),
    "api": st.sampled_from([None, "chat", "messages"]),
    "status": st.sampled_from([200, 200, 200, 400, 401, 404, 429, 429, 499, 500, 502, 504]),
    "error_code": st.sampled_from([None, "rate_limit_exceeded", "capacity_exceeded"]),
    "stream": st.booleans(), "latency_ms": _ms, "ttft_ms": st.one_of(st.none(), _ms),
    "prompt_tokens": st.integers(0, 100_000), "completion_tokens": st.integers(0, 10_000),
    "cached_tokens": st.integers(0, 5_000), "cache_creation_tokens": st.integers(0, 500),
    "cost_nanos": st.integers(0, 10 ** 13),  # large: a float sum would lose the last digits
})
_batches = st.lists(st.lists(_record, min_size=1, max_size=40), min_size=1, max_size=4)
_bounds = st.tuples(st.floats(-100, 2 * DAY + 100), st.one_of(st.none(), st.floats(-100, 2 * DAY + 100)))


def _records(batches: list[list[dict]], region: int, prefix: str) -> list[list[UsageRecord]]:
    """A repeated id keeps its first time, as a replayed record does (on Postgres the idempotency key is
    (request_id, ts): the table is partitioned on ts, migration 0016)."""
    out = []
    first: dict[int, float] = {}
    for batch in batches:
        out.append([UsageRecord(request_id=f"{prefix}-{d['id']}", ts=region + first.setdefault(d["id"], d["offset"]),
                                endpoint="chat.completions",
                                upstream="sim", usage_source="upstream",
                                **{k: v for k, v in d.items() if k not in ("id", "offset")}) for d in batch])
    return out


def _expected(raw: list[UsageRecord], grain: int) -> dict[tuple, tuple]:
    """The rollup rows, restated from the raw rows without the writer's code: one pass per row."""
    out: dict[tuple, list] = {}
    for r in raw:
        cls = 429 if r.status == 429 else r.status // 100 * 100
        key = (_floor(r.ts, grain) * grain, *(x or "" for x in (
            r.identity_id, r.team, r.key_id, r.model, r.version, r.route, r.api)), cls, r.error_code or "")
        v = out.setdefault(key, [0] * 8 + [math.inf, -math.inf, None, None, -math.inf]
                           + [0] * (2 * rollups.BUCKETS))
        for i, n in enumerate((1, int(r.status >= 400), int(r.stream), r.prompt_tokens, r.completion_tokens,
                               r.cached_tokens, r.cache_creation_tokens, r.cost_nanos)):
            v[i] += n
        v[8], v[9], v[12] = min(v[8], r.latency_ms), max(v[9], r.latency_ms), max(v[12], r.ts)
        v[13 + sum(e <= r.latency_ms for e in rollups.EDGES)] += 1
        if r.ttft_ms is not None:
            v[10] = r.ttft_ms if v[10] is None else min(v[10], r.ttft_ms)
            v[11] = r.ttft_ms if v[11] is None else max(v[11], r.ttft_ms)
            v[13 + rollups.BUCKETS + sum(e <= r.ttft_ms for e in rollups.EDGES)] += 1
    return {k: tuple(v) for k, v in out.items()}


def _differences(got: dict[tuple, tuple], want: dict[tuple, tuple]) -> list:
    """The first few rollup rows that differ, as (key, stored, expected): a short message where pytest's own
    diff of thousands of 147-column rows would take minutes."""
    return [(k, got.get(k), want.get(k)) for k in sorted(set(got) | set(want), key=repr) if got.get(k) != want.get(k)][:3]


async def _stored(store: SqlStore, table, region: int) -> dict[tuple, tuple]:
    q = select(table).where(table.c.bucket >= region - DAY, table.c.bucket < region + 3 * DAY)
    async with store.engine.connect() as conn:
        return {tuple(r[:10]): tuple(r[10:]) for r in await conn.execute(q)}


async def _raw(store: SqlStore, prefix: str) -> list[UsageRecord]:
    q = select(t.usage).where(t.usage.c.request_id.like(prefix + "-%"))
    async with store.engine.connect() as conn:
        return [UsageRecord(**{f: getattr(r, f) for f in UsageRecord.__struct_fields__}) for r in await conn.execute(q)]


# no shrinking: each example writes to a database, and a failure names its batches anyway
@settings(max_examples=30, deadline=None, phases=(Phase.explicit, Phase.reuse, Phase.generate),
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batches=_batches, bounds=st.lists(_bounds, min_size=1, max_size=3))
async def test_rollups_equal_the_raw_rows_exactly_over_random_batches(store, batches, bounds):
    n = next(_examples)
    region, prefix = BASE + n * 10 * DAY, f"ex{n}"  # each example its own days and ids
    for batch in _records(batches, region, prefix):
        await store.write_usage(batch)
    raw = await _raw(store, prefix)
    assert len(raw) == len({d["id"] for b in batches for d in b})  # a repeated id is one row
    for grain, table in ((60, t.usage_minute), (3600, t.usage_hour), (DAY, t.usage_day)):
        assert _differences(await _stored(store, table, region), _expected(raw, grain)) == [], grain
    for lo, hi in bounds:
        since, until = region + lo, (None if hi is None else region + hi)
        inside = [r for r in raw if r.ts >= since and (until is None or r.ts < until)]
        for by, of in (("identity", lambda r: r.identity_id), ("key", lambda r: r.key_id), ("team", lambda r: r.team),
                       ("model", lambda r: r.model), ("route", lambda r: r.route), ("api", lambda r: r.api),
                       ("day", lambda r: _date(r.ts))):
            want: dict = defaultdict(lambda: [0] * 6)
            for r in inside:
                w = want[of(r)]
                for i, x in enumerate((1, int(r.status >= 400), r.prompt_tokens, r.completion_tokens, r.cached_tokens,
                                       r.cost_nanos)):
                    w[i] += x
            got = await store.aggregate_usage(by, since=since, until=until)
            # other examples' rows lie days before this one's and later ones are not written yet
            assert {g.key: [g.requests, g.errors, g.prompt_tokens, g.completion_tokens, g.cached_tokens, g.cost_nanos]
                    for g in got} == dict(want), (by, since, until)


def _floor(ts: float, grain: int) -> int:
    """The whole ``grain``s before ``ts``, exactly (``ts / grain`` may round up to the next whole one)."""
    n = math.floor(ts / grain)
    return n - 1 if n * grain > ts else n


def _date(ts: float) -> str:
    import datetime as dt

    return (dt.date(1970, 1, 1) + dt.timedelta(days=_floor(ts, DAY))).isoformat()


@given(values=st.lists(st.floats(0, 2_000_000), min_size=1, max_size=200), q=st.sampled_from([50, 90, 95, 99, 100]))
def test_percentiles_from_the_histogram_are_within_the_documented_bound(values, q):
    hist = [0] * rollups.BUCKETS
    for v in values:
        hist[rollups.bucket_of(v)] += 1
    exact = sorted(values)[max(1, math.ceil(q / 100 * len(values))) - 1]
    got = rollups.percentile(hist, q, min(values), max(values))
    if exact >= rollups.EDGES[-1]:
        assert exact <= got <= max(values)
    elif exact < 1.0:
        assert abs(got - exact) <= 0.5
    else:
        assert abs(got - exact) <= (2 ** (1 / 6) - 1) * exact + 1e-9, (got, exact)


def test_a_gateway_s_rollups_and_summary_equal_its_raw_rows_after_random_traffic(store_url, tmp_path):
    """A real sluice on SQLite or Postgres, seeded random traffic: whole answers and streams, upstream
    failures (the sim's injected 502s and 503s), limit hits, unknown models, bad keys and bodies, cache hits
    priced apart. Afterwards every rollup row equals its raw rows, and the summary's every ``by=`` (over a
    range whose ends are not whole minutes, so its edges are read from raw rows) equals the raw rows' sums."""
    import asyncio
    import random
    import time

    import httpx

    from support import Sim, start_gateway

    sim = Sim(tmp_path)
    g = None
    try:
        httpx.post(sim.url + "/sim/faults", json={"error_status": 502, "error_rate": 0.15}).raise_for_status()
        g = start_gateway(
            tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
            models=[{"name": "sim-small", "upstream": "sim"},
                    {"name": "scarce", "upstream": "sim", "upstream_model": "sim-small"}],
            identities=[{"name": "web", "owner": "o", "team": "shop", "models": ["*"]},
                        {"name": "batch", "owner": "o", "models": ["*"]}],
            extra={"store": {"url": store_url}, "teams": [{"name": "shop", "owner": "o"}], "prices": {"sim-small": {"input": 0.15, "output": 0.6, "cached_input": 0.075}},
                   "limits": {"rules": [{"name": "scarce", "match": {"model": "scarce"}, "requests_per_minute": 3}]}})
        since = time.time() - 0.5
        rnd = random.Random(29)
        statuses = set()
        for i in range(160):
            who = rnd.choice(["web", "batch"])
            key = g.keys[who] if rnd.random() > 0.05 else g.keys[who][:-2] + "xx"
            model = rnd.choice(["sim-small"] * 6 + ["scarce", "nope"])
            body: dict = {"model": model, "max_tokens": rnd.randint(1, 12), "stream": rnd.random() < 0.4,
                          "messages": [{"role": "user", "content": "same prefix " * rnd.randint(1, 30)}]}
            if rnd.random() < 0.03:
                body = {"model": model}  # no messages: 400
            statuses.add(g.post("/v1/chat/completions", key, json=body).status_code)
        assert {200, 401, 404, 429, 502} <= statuses, statuses
        for by in ("identity", "key", "team", "model", "route", "api", "day"):
            got = g.admin("GET", "/admin/usage/summary", params={"by": by, "since": since}).json()
            raw = asyncio.run(_raw_of(store_url))
            want: dict = defaultdict(lambda: [0] * 6)
            for r in raw:
                if r.ts >= since:
                    k = {"identity": r.identity_id, "key": r.key_id, "team": r.team, "model": r.model, "route": r.route,
                         "api": r.api, "day": _date(r.ts)}[by]
                    for i, x in enumerate((1, int(r.status >= 400), r.prompt_tokens, r.completion_tokens,
                                           r.cached_tokens, r.cost_nanos)):
                        want[k][i] += x
            assert {d["key"]: [d["requests"], d["errors"], d["prompt_tokens"], d["completion_tokens"],
                               d["cached_tokens"], d["cost_nanos"]] for d in got["data"]} == dict(want), by
        assert g.stop() == 0
        g = None
        raw, stored = asyncio.run(_raw_of(store_url)), asyncio.run(_rollups_of(store_url))
        assert any(r.stream for r in raw) and any(r.ttft_ms is not None for r in raw) and any(r.cost_nanos for r in raw)
        for grain, name in ((60, "usage_minute"), (3600, "usage_hour"), (DAY, "usage_day")):
            assert _differences(stored[name], _expected(raw, grain)) == [], name
    finally:
        if g is not None:
            g.stop()
        sim.stop()


async def _raw_of(url: str) -> list[UsageRecord]:
    s = SqlStore(url)
    await s.open(migrate=False)
    try:
        return await s.list_usage(limit=1_000_000)
    finally:
        await s.close()


async def _rollups_of(url: str) -> dict[str, dict[tuple, tuple]]:
    s = SqlStore(url)
    await s.open(migrate=False)
    try:
        out = {}
        for table in (t.usage_minute, t.usage_hour, t.usage_day):
            async with s.engine.connect() as conn:
                out[table.name] = {tuple(r[:10]): tuple(r[10:]) for r in await conn.execute(select(table))}
        return out
    finally:
        await s.close()


@pytest.mark.timeout(600)
async def test_the_migration_backfills_rollups_from_rows_written_before_it_past_the_store_timeout(store_url):
    """A database at revision 0014 with usage rows (as an older sluice wrote them: no rollups); opening it with
    this sluice migrates to 0015 however short the store's request timeout, the rollups then equal those rows,
    and later batches add to them."""
    import random

    from sqlalchemy import insert

    from sluice.store.migrate import MIGRATIONS

    def to_0014(connection) -> None:
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0014")

    rnd = random.Random(15)
    old = [UsageRecord(request_id=f"old-{i}", ts=BASE + rnd.uniform(0, 3 * DAY), identity_id=rnd.choice(["a", None]),
                       key_id=None, endpoint="chat.completions", model=rnd.choice(["m1", "m2"]), upstream="u",
                       status=rnd.choice([200, 429, 502]), latency_ms=rnd.uniform(0, 5000), stream=rnd.random() < 0.5,
                       ttft_ms=rnd.choice([None, rnd.uniform(0, 900)]), prompt_tokens=rnd.randint(0, 999),
                       cost_nanos=rnd.randint(0, 10 ** 12), team=rnd.choice(["red", None]))
           for i in range(25_000)]  # more than one backfill chunk
    s = SqlStore(store_url)
    await s.open(migrate=False)
    try:
        async with s.engine.begin() as conn:
            await conn.run_sync(to_0014)
            # the columns of 0014 (later revisions add their own: 0017's listener)
            await conn.execute(insert(t.usage), [{f: getattr(r, f) for f in UsageRecord.__struct_fields__ if f != "listener"}
                                                 for r in old])
    finally:
        await s.close()
    # the store timeout (for requests) far below what the migration takes: a start's migration has its own bound
    # (store/migrate.py), so a backfill over a large ledger does not make sluice fail to start
    s = SqlStore(store_url, timeout=0.3)
    await s.open()
    await s.close()
    s = SqlStore(store_url, timeout=120)
    await s.open()
    try:
        assert await s.schema_version() >= "0015"  # 0015 or a later head
        stored = {tb.name: await _stored(s, tb, BASE) for tb in (t.usage_minute, t.usage_hour, t.usage_day)}
        for grain, name in ((60, "usage_minute"), (3600, "usage_hour"), (DAY, "usage_day")):
            assert _differences(stored[name], _expected(old, grain)) == [], name
        new = [msgspec_replace(r, request_id="new-" + r.request_id) for r in old[:100]]
        await s.write_usage(new)
        assert _differences(await _stored(s, t.usage_day, BASE), _expected(old + new, DAY)) == []
    finally:
        await s.close()


def msgspec_replace(r: UsageRecord, **changes) -> UsageRecord:
    import msgspec

    return msgspec.structs.replace(r, **changes)
