"""The store contract, run against SQLite and Postgres alike."""

from __future__ import annotations

import asyncio
import time

import pytest

from sluice.core.errors import Conflict
from sluice.core.types import ApiKey, ChangeEvent, Identity, SigningKey, Team, UsageRecord
from sluice.store import StoreUnavailable, open_store
from sluice.store.sql import SqlStore

from pg_databases import drop_pg_database, fresh_pg_database


@pytest.fixture()
async def store(store_url):
    s = open_store(store_url)
    await s.open()
    yield s
    await s.close()


def ident(i: str, **kw) -> Identity:
    return Identity(id=f"id-{i}", name=f"name-{i}", owner="o@example.com", created_at=time.time(), **kw)


def key(i: str, identity_id: str, **kw) -> ApiKey:
    return ApiKey(id=f"key-{i}", identity_id=identity_id, hash=f"{i:0>64}"[:64], display="slk_dev_abcd…wxyz",
                  created_at=time.time(), **kw)


async def test_identities_and_keys_round_trip(store):
    a = ident("a", models=["m1", "m*"], roles=["invoker", "auditor"], team=None)
    await store.put_identity(a)
    await store.put_key(key("1", a.id, plane="data"))
    assert await store.get_identity(a.id) == a
    assert await store.find_identity("name-a") == a
    assert (await store.list_keys(a.id))[0].plane == "data"
    assert await store.get_identity("missing") is None


async def test_put_identity_replaces_by_id(store):
    await store.put_identity(ident("a"))
    await store.put_identity(Identity(id="id-a", name="name-a", owner="new@example.com", created_at=1.0))
    got = await store.list_identities()
    assert len(got) == 1 and got[0].owner == "new@example.com"


async def test_a_duplicate_name_is_a_conflict(store):
    await store.put_identity(ident("a"))
    with pytest.raises(Conflict):
        await store.put_identity(Identity(id="id-other", name="name-a", owner="o", created_at=1.0))


async def test_revoke_is_idempotent_and_unknown_keys_are_false(store):
    await store.put_identity(ident("a"))
    await store.put_key(key("1", "id-a"))
    assert await store.revoke_key("key-1", 100.0) is True
    assert await store.revoke_key("key-1", 200.0) is True
    assert (await store.get_key("key-1")).revoked_at == 100.0
    assert await store.revoke_key("key-nope", 1.0) is False


async def test_touch_keys_records_last_use(store):
    await store.put_identity(ident("a"))
    await store.put_key(key("1", "id-a"))
    await store.put_key(key("2", "id-a"))
    await store.touch_keys({"key-1": 123.0, "key-2": 456.0, "key-unknown": 1.0})
    assert (await store.get_key("key-1")).last_used_at == 123.0
    assert (await store.get_key("key-2")).last_used_at == 456.0


async def test_usage_batch_is_summarized_exactly(store):
    now = time.time()
    recs = [UsageRecord(request_id=f"r{i}", ts=now + i * 1e-3, identity_id=f"id-{i % 3}", key_id=None,
                        endpoint="chat.completions", model="m" if i % 2 else "n", upstream="u",
                        status=200 if i % 5 else 429, prompt_tokens=i % 7, completion_tokens=i % 11)
            for i in range(5000)]
    await store.write_usage(recs)
    await store.write_usage([])
    rows = {(r.identity_id, r.model): r for r in await store.summarize_usage()}
    for (iid, model), row in rows.items():
        mine = [x for x in recs if x.identity_id == iid and x.model == model]
        assert row.requests == len(mine)
        assert row.errors == sum(1 for x in mine if x.status >= 400)
        assert row.prompt_tokens == sum(x.prompt_tokens for x in mine)
        assert row.completion_tokens == sum(x.completion_tokens for x in mine)
    assert sum(r.requests for r in rows.values()) == 5000
    newest = await store.list_usage(limit=3)
    assert [r.request_id for r in newest] == ["r4999", "r4998", "r4997"]
    assert len(await store.list_usage(since=recs[4990].ts)) == 10


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


async def test_hostile_strings_are_stored_verbatim_and_harm_nothing(store):
    evil = "x'); DROP TABLE identities;--"
    await store.put_identity(Identity(id="id-\"quoted'", name=evil, owner="o'; DELETE FROM api_keys;--", created_at=1.0))
    got = await store.find_identity(evil)
    assert got is not None and got.id == "id-\"quoted'" and got.owner.startswith("o'; DELETE")
    await store.put_key(key("k'1", "id-\"quoted'"))
    assert await store.get_key("key-k'1") is not None
    assert len(await store.list_identities()) == 1


async def test_migrations_are_idempotent(store_url):
    for _ in range(2):
        s = open_store(store_url)
        await s.open()
        assert await s.schema_version() == "0002"
        await s.close()


async def test_replicas_opening_a_fresh_postgres_together_migrate_once():
    url = await fresh_pg_database()
    try:
        stores = [open_store(url) for _ in range(3)]
        await asyncio.gather(*(s.open() for s in stores))
        assert [await s.schema_version() for s in stores] == ["0002"] * 3
        for s in stores:
            await s.close()
    finally:
        await drop_pg_database(url)


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:1/test", "sqlite:////proc/nope/x.db"])
async def test_an_unreachable_database_fails_fast_with_store_unavailable(url):
    s = SqlStore(url, timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises((StoreUnavailable, OSError)):
        await s.open()
    assert time.monotonic() - t0 < 5
    await s.close()
