"""The store behaves the same on SQLite and on a real Postgres: records round-trip, conflicts
are typed, the ledger sums exactly, migrations are idempotent and safe under concurrency,
hostile strings are data, and an unreachable database fails fast with ``StoreUnavailable``."""

from __future__ import annotations

import asyncio
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import sluice.store.sql as sql_module
from sluice.core.errors import Conflict
from sluice.core.types import ApiKey, ChangeEvent, Identity, SigningKey, Team, UsageRecord
from sluice.store import StoreUnavailable, open_store
from sluice.store.sql import SqlStore

from pg_databases import drop_pg_database, fresh_pg_database

TABLES = {"identities", "api_keys", "usage", "changes", "teams", "signing_keys", "alembic_version"}
HEAD = ScriptDirectory(str(Path(sql_module.__file__).parent / "migrations")).get_current_head()


@pytest.fixture()
async def pg_url() -> AsyncIterator[str]:
    url = await fresh_pg_database()
    try:
        yield url
    finally:
        await drop_pg_database(url)


@pytest.fixture()
async def store(store_url: str) -> AsyncIterator[SqlStore]:
    s = SqlStore(store_url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# --- records --------------------------------------------------------------------------------

def identity(n: str, **kw) -> Identity:
    fields = {"owner": f"{n}@example.com", "created_at": 1_700_000_000.5, **kw}
    return Identity(id=f"id-{n}", name=f"svc-{n}", **fields)


def api_key(n: str, identity_id: str, **kw) -> ApiKey:
    fields = {"created_at": 1_700_000_001.25, **kw}
    return ApiKey(id=f"key-{n}", identity_id=identity_id, hash=uuid.uuid5(uuid.NAMESPACE_OID, n).hex * 2,
                  display=f"slk_dev_ab…{n[-4:]:>4}", **fields)


async def table_names(s: SqlStore) -> set[str]:
    async with s.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


# --- identities and keys -------------------------------------------------------------------

async def test_identities_and_keys_round_trip_with_every_field(store: SqlStore) -> None:
    a = identity("a", environment="prod", models=["m1", "gpt-*"], created_by="admin", expires_at=1_800_000_000.0,
                 source="config", team="payments", roles=["invoker", "auditor"])
    b = identity("b")
    for i in (a, b):
        await store.put_identity(i)
    k1 = api_key("k1", a.id, created_by="admin", expires_at=1_750_000_000.0, source="config", plane="data")
    k2 = api_key("k2", a.id, plane="control", created_at=1_700_000_002.0)
    k3 = api_key("k3", b.id, created_at=1_700_000_003.0)
    for k in (k1, k2, k3):
        await store.put_key(k)

    assert await store.get_identity(a.id) == a
    assert await store.find_identity("svc-a") == a
    assert await store.list_identities() == [a, b]  # ordered by name
    assert await store.get_identity("id-missing") is None
    assert await store.find_identity("svc-missing") is None
    assert await store.get_key("key-k2") == k2
    assert await store.list_keys(a.id) == [k1, k2]  # ordered by creation
    assert await store.list_keys() == [k1, k2, k3]
    assert await store.get_key("key-missing") is None


async def test_disabled_identities_are_listed_only_when_asked(store: SqlStore) -> None:
    await store.put_identity(identity("live"))
    await store.put_identity(identity("gone", disabled_at=5.0))
    assert [i.name for i in await store.list_identities()] == ["svc-live"]
    assert [i.name for i in await store.list_identities(include_disabled=True)] == ["svc-gone", "svc-live"]


async def test_put_identity_replaces_the_record_with_the_same_id(store: SqlStore) -> None:
    await store.put_identity(identity("a", models=["m1"]))
    replaced = Identity(id="id-a", name="svc-a-renamed", owner="new@example.com", created_at=2.0,
                        models=["m2", "m3"], roles=["operator"], disabled_at=9.0)
    await store.put_identity(replaced)
    assert await store.get_identity("id-a") == replaced
    assert await store.find_identity("svc-a") is None
    assert await store.list_identities(include_disabled=True) == [replaced]


async def test_a_second_identity_with_a_taken_name_is_a_conflict(store: SqlStore) -> None:
    first = identity("a")
    await store.put_identity(first)
    with pytest.raises(Conflict):
        await store.put_identity(Identity(id="id-intruder", name=first.name, owner="x@example.com", created_at=3.0))
    # the failed insert changed nothing, and the store is still usable
    assert await store.list_identities(include_disabled=True) == [first]
    await store.put_identity(identity("b"))
    assert await store.find_identity("svc-b") is not None


async def test_revoke_key_is_idempotent_keeps_the_first_time_and_is_false_for_an_unknown_id(store: SqlStore) -> None:
    await store.put_identity(identity("a"))
    await store.put_key(api_key("k1", "id-a"))
    await store.put_key(api_key("k2", "id-a"))
    assert await store.revoke_key("key-k1", 100.0) is True
    assert await store.revoke_key("key-k1", 200.0) is True
    assert (await store.get_key("key-k1")).revoked_at == 100.0
    assert (await store.get_key("key-k2")).revoked_at is None  # only the named key
    assert await store.revoke_key("key-unknown", 300.0) is False
    assert await store.get_key("key-unknown") is None


async def test_touch_keys_records_last_use_in_one_batch(store: SqlStore) -> None:
    await store.put_identity(identity("a"))
    for n in ("k1", "k2", "k3"):
        await store.put_key(api_key(n, "id-a"))
    await store.touch_keys({})
    await store.touch_keys({"key-k1": 1_700_000_100.125, "key-k2": 1_700_000_200.5, "key-nope": 1.0})
    assert (await store.get_key("key-k1")).last_used_at == 1_700_000_100.125
    assert (await store.get_key("key-k2")).last_used_at == 1_700_000_200.5
    assert (await store.get_key("key-k3")).last_used_at is None
    assert await store.get_key("key-nope") is None  # touching does not create
    await store.touch_keys({"key-k1": 1_700_000_300.0})
    assert (await store.get_key("key-k1")).last_used_at == 1_700_000_300.0


# --- the usage ledger ------------------------------------------------------------------------

async def test_a_batch_of_5000_usage_records_is_summarized_exactly_and_listed_newest_first(store: SqlStore) -> None:
    statuses = [200, 200, 201, 399, 400, 401, 404, 429, 499, 500, 502, 504]
    records = [
        UsageRecord(request_id=f"req-{i:05d}", ts=1_000.0 + i, identity_id=f"id-{i % 4}" if i % 13 else None,
                    key_id=f"key-{i % 4}", endpoint="chat.completions", model=("m-a", "m-b", None)[i % 3],
                    upstream="sim", status=statuses[i % len(statuses)], prompt_tokens=(i * 7) % 101,
                    completion_tokens=(i * 11) % 257, latency_ms=i / 10, stream=bool(i % 2),
                    usage_source="upstream" if i % 2 else "estimated", error_code="x" if i % 5 == 0 else None)
        for i in range(5000)
    ]
    shuffled = records[:]
    random.Random(7).shuffle(shuffled)  # ordering must come from ts, not from insertion order
    await store.write_usage(shuffled)
    await store.write_usage([])

    expected: dict[tuple, list[int]] = {}
    for r in records:
        row = expected.setdefault((r.identity_id, r.model), [0, 0, 0, 0])
        row[0] += 1
        row[1] += r.status >= 400
        row[2] += r.prompt_tokens
        row[3] += r.completion_tokens
    got = {(s.identity_id, s.model): [s.requests, s.errors, s.prompt_tokens, s.completion_tokens]
           for s in await store.summarize_usage()}
    assert got == expected
    assert sum(v[0] for v in got.values()) == 5000
    assert sum(v[1] for v in got.values()) == sum(1 for r in records if r.status >= 400)

    since = {(s.identity_id, s.model): s.requests for s in await store.summarize_usage(since=1_000.0 + 4_990)}
    assert sum(since.values()) == 10

    newest = await store.list_usage(limit=5)
    assert newest == records[::-1][:5]  # every field round-trips, newest first
    assert [r.request_id for r in await store.list_usage(since=1_000.0 + 4_997)] == ["req-04999", "req-04998", "req-04997"]
    assert len(await store.list_usage()) == 1000  # the default limit
    assert len(await store.list_usage(limit=6000)) == 5000


# --- migrations ---------------------------------------------------------------------------

async def test_migrations_are_idempotent_when_the_same_database_is_opened_twice(store_url: str) -> None:
    assert HEAD is not None
    first = SqlStore(store_url)
    await first.open()
    try:
        assert await first.schema_version() == HEAD
        await first.put_identity(identity("survivor"))
        tables = await table_names(first)
        assert TABLES <= tables
    finally:
        await first.close()

    second = SqlStore(store_url)
    await second.open()
    try:
        assert await second.schema_version() == HEAD
        assert await table_names(second) == tables
        assert (await second.find_identity("svc-survivor")) is not None  # re-opening kept the data
    finally:
        await second.close()


async def test_the_migrated_database_has_exactly_the_indexes_the_schema_declares(store: SqlStore) -> None:
    """schema.py and the migrations agree: an index dropped or added in one and not the other
    (migration 0012 dropped the unused (identity_id, ts) usage index) shows here, on both backends."""
    from sluice.store import schema

    def indexes(c) -> dict[str, set[tuple[str, tuple[str, ...]]]]:
        insp = inspect(c)
        # Postgres lists the index behind each UNIQUE constraint too: those are constraints, not declared indexes
        return {name: {(i["name"], tuple(i["column_names"])) for i in insp.get_indexes(name)
                       if "duplicates_constraint" not in i}
                for name in schema.metadata.tables}

    async with store.engine.connect() as conn:
        got = await conn.run_sync(indexes)
    declared = {name: {(i.name, tuple(col.name for col in i.columns)) for i in table.indexes}
                for name, table in schema.metadata.tables.items()}
    if store.dialect == "postgresql":  # partitioned on ts (migration 0016): its unique keys hold ts
        declared["usage"] = {(n, cols + ("ts",) if n == "ux_usage_request_id" else cols) for n, cols in declared["usage"]}
    else:  # the rollups' summary indexes (migration 0019) use INCLUDE: Postgres only
        for grain in ("minute", "hour", "day"):
            declared[f"usage_{grain}"].discard((f"ix_usage_{grain}_sums", ("bucket",)))
    assert got == declared
    assert ("ix_usage_ts", ("ts",)) in got["usage"]
    assert not any(name == "ix_usage_identity_ts" for name, _ in got["usage"])


async def test_two_replicas_opening_a_fresh_postgres_together_both_succeed(pg_url: str) -> None:
    stores = [SqlStore(pg_url), SqlStore(pg_url)]
    try:
        results = await asyncio.gather(*(s.open() for s in stores), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert [await s.schema_version() for s in stores] == [HEAD, HEAD]
        assert TABLES <= await table_names(stores[0])
        await stores[0].put_identity(identity("a"))
        assert await stores[1].find_identity("svc-a") is not None
    finally:
        for s in stores:
            await s.close()
    conn = await asyncpg.connect(pg_url, timeout=5)
    try:
        assert await conn.fetchval("SELECT count(*) FROM alembic_version") == 1
    finally:
        await conn.close()


# --- hostile input ---------------------------------------------------------------------------

async def test_hostile_names_and_quoted_key_ids_are_stored_verbatim_and_harm_no_table(store: SqlStore) -> None:
    evil_name = "x'); DROP TABLE identities;--"
    evil_id = "id-\"; DROP TABLE api_keys; --'"
    evil_key_id = "key-'\"`; DELETE FROM usage WHERE '1'='1"
    hostile = Identity(id=evil_id, name=evil_name, owner="o'); DELETE FROM api_keys;--", created_at=1.0,
                       models=["m'); DROP TABLE usage;--", "\\\"\x01"], team="t\"'")
    await store.put_identity(hostile)
    key = api_key("k", evil_id)
    key = ApiKey(**{**{f: getattr(key, f) for f in key.__struct_fields__}, "id": evil_key_id, "display": "'\"--"})
    await store.put_key(key)
    await store.write_usage([UsageRecord(request_id="'; DROP TABLE usage;--", ts=1.0, identity_id=evil_id,
                                         key_id=evil_key_id, endpoint="e", model="'", upstream="\"", status=200)])

    assert await store.find_identity(evil_name) == hostile
    assert await store.get_identity(evil_id) == hostile
    assert await store.get_key(evil_key_id) == key
    assert await store.list_keys(evil_id) == [key]
    assert await store.revoke_key(evil_key_id, 5.0) is True
    assert await store.find_identity("x") is None  # no pattern matching on names
    assert TABLES <= await table_names(store)
    assert await store.list_identities() == [hostile]
    assert [r.request_id for r in await store.list_usage()] == ["'; DROP TABLE usage;--"]


# --- an unreachable database ------------------------------------------------------------------

async def test_an_unreachable_postgres_fails_open_and_ping_with_store_unavailable_within_5s() -> None:
    s = open_store("postgresql://postgres@127.0.0.1:1/test")
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.open()
        assert time.monotonic() - t0 < 5
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            await s.ping()
        assert time.monotonic() - t0 < 5
        assert "not open" not in str(info.value)  # a real connection attempt failed, not a guard
    finally:
        await s.close()


async def test_a_postgres_that_accepts_but_never_answers_fails_within_the_store_timeout() -> None:
    """A black hole (accepts TCP, never speaks) is worse than a refused port: it must still be bounded."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    port = hole.getsockname()[1]
    s = SqlStore(f"postgresql://postgres@127.0.0.1:{port}/test", timeout=1.0)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.open()
        assert time.monotonic() - t0 < 3
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await s.ping()
        assert time.monotonic() - t0 < 3
    finally:
        await s.close()
        hole.close()


async def test_identity_activity_gives_models_and_last_use(store):
    await store.write_usage([UsageRecord(request_id=str(i), ts=float(i), identity_id="id-a", key_id=None,
                                         endpoint="e", model="m" if i < 3 else "n", upstream="u", status=200)
                             for i in range(5)])
    act = {(a.identity_id, a.model): a for a in await store.identity_activity()}
    assert act[("id-a", "m")].requests == 3 and act[("id-a", "m")].last_at == 2.0
    assert act[("id-a", "n")].last_at == 4.0


async def test_teams_signing_keys_and_changes(store):
    await store.put_team(Team(name="t", owner="a", created_at=1.0))
    await store.put_team(Team(name="t", owner="b", created_at=1.0))
    assert [t.owner for t in await store.list_teams()] == ["b"]
    sk = SigningKey(kid="k1", alg="ES256", private_sealed="sealed", public_jwk={"kty": "EC"}, created_at=1.0,
                    retire_at=2.0, expires_at=3.0)
    await store.put_signing_key(sk)
    assert await store.list_signing_keys() == [sk]
    for i in range(3):
        await store.record_change(ChangeEvent(id=f"c{i}", ts=float(i), actor="x", action="a", target="t", detail={"i": i}))
    assert [c.detail["i"] for c in await store.list_changes(limit=2)] == [2, 1]


# --- the ledger's batch insert (store/usage_rows.py: on the drivers, not SQLAlchemy) ----------

def full_record(n: int, **kw) -> UsageRecord:
    """A record with every field set to something other than its default."""
    fields = dict(request_id=f"req_{n:04x}", ts=1_700_000_000.0 + n, identity_id=f"id-{n % 3}", key_id=f"key-{n}",
                  endpoint="chat.completions", model="m'\"", upstream="u", status=200 + n % 3 * 100,
                  prompt_tokens=n + 1, completion_tokens=2 * n + 1, latency_ms=1.5 + n, ttft_ms=0.25 + n,
                  upstream_ms=0.75 + n, stream=bool(n % 2), usage_source="estimated", error_code="e" if n % 2 else None,
                  team="team-a", route="route-b", version="v2", cached_tokens=n, cost_nanos=2**40 + n)
    return UsageRecord(**{**fields, **kw})


async def test_usage_rows_round_trip_every_field_and_a_replayed_batch_counts_once(store: SqlStore) -> None:
    first = [full_record(n) for n in range(40)]
    await store.write_usage(first)
    # a spill file replayed after a crash: the batch again plus newer records; repeats are skipped
    replay = first[25:] + [full_record(n) for n in range(40, 50)]
    await store.write_usage(replay)
    got = sorted(await store.list_usage(limit=500), key=lambda r: r.request_id)
    assert got == sorted(first + replay[15:], key=lambda r: r.request_id)
    assert sum(s.requests for s in await store.summarize_usage()) == 50


async def test_unset_usage_fields_are_stored_as_null_and_flags_as_integers_on_sqlite(tmp_path: Path) -> None:
    """The SQLite writer's adapters for None and bool (usage_rows.py: they skip sqlite3's costly adapter protocol)
    bind what sqlite3 bound without them: NULL, never a text 'None'; 1 and 0."""
    import sqlite3

    s = SqlStore(f"sqlite:///{tmp_path}/store.db")
    await s.open()
    try:
        await s.write_usage([UsageRecord(request_id=f"r{n}", ts=1.0 + n, identity_id=None, key_id=None, endpoint="e",
                                         model=None, upstream=None, status=200, stream=bool(n)) for n in range(2)])
        assert [r.model for r in await s.list_usage()] == [None, None]
    finally:
        await s.close()
    db = sqlite3.connect(f"{tmp_path}/store.db")
    got = db.execute("SELECT typeof(model), typeof(ttft_ms), typeof(listener), stream, typeof(stream) FROM usage "
                     "ORDER BY request_id").fetchall()
    db.close()
    assert got == [("null", "null", "null", 0, "integer"), ("null", "null", "null", 1, "integer")]


async def test_usage_rows_keep_being_written_past_two_to_the_31(pg_url: str) -> None:
    """A 32-bit row sequence would stop the ledger after 2,147,483,647 requests (migration 0011)."""
    s = SqlStore(pg_url)
    await s.open()
    try:
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute("SELECT setval(pg_get_serial_sequence('usage', 'seq'), 2147483646)")
        finally:
            await conn.close()
        await s.write_usage([full_record(n) for n in range(5)])
        assert len(await s.list_usage()) == 5
    finally:
        await s.close()
