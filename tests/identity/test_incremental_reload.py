"""A replica's registry patched with what changed since the version it holds equals one loaded whole from
the store, after random sequences of every identity, key, role and team change made by another replica
(in-process, on a real SQLite file and a real Postgres database); and it is loaded whole when what changed
cannot be told exactly (history pruned, a version that went backwards, the first load)."""

from __future__ import annotations

import asyncio
import random

import pytest
from sqlalchemy import delete

from sluice.core.config import Security
from sluice.core.identity_config import IdentitySettings
from sluice.core.errors import GatewayError
from sluice.identity import SYSTEM, CredentialRegistry, Hasher, IdentityService, IdentitySync
from sluice.identity.principal import Principal
from sluice.store import Writes
from sluice.store import schema as t
from sluice.store.identity_changes import since
from sluice.store.sql import SqlStore

PEPPER = b"a-pepper-of-at-least-16-chars"


def snapshot(registry: CredentialRegistry) -> dict:
    """Everything a request reads from the registry, as plain values."""
    def principal(p: Principal) -> tuple:
        scopes = p.scopes
        return (*(getattr(p, s) for s in Principal.__slots__ if s != "scopes"),
                scopes._all, scopes._exact, scopes._prefixes)
    return {"by_hash": {h: principal(p) for h, p in registry._by_hash.items()},
            "hash_of_key": dict(registry._hash_of_key),
            "identities": dict(registry._identities),
            "by_name": {n: i.id for n, i in registry._by_name.items()}}


async def whole(store: SqlStore) -> dict:
    fresh = CredentialRegistry(Hasher(PEPPER))
    fresh.load(await store.list_identities(), await store.list_keys())
    return snapshot(fresh)


class Replicas:
    """Replica A makes the changes (its own registry updated in-process); replica B follows the store."""

    def __init__(self, store: SqlStore) -> None:
        hasher = Hasher(PEPPER)
        self.store = store
        self.a = IdentityService(store, CredentialRegistry(hasher), hasher, Security())
        self.b_registry = CredentialRegistry(hasher)
        self.b = IdentityService(store, self.b_registry, hasher, Security())

    async def follow(self) -> None:
        """B catches up as its sync task does, and must then equal a whole load."""
        assert await self.b.load(await self.store.identity_version())
        assert snapshot(self.b_registry) == await whole(self.store)


async def random_change(r: Replicas, rng: random.Random, n: int) -> None:
    a, store = r.a, r.store
    idents = await store.list_identities(include_disabled=True)
    keys = await store.list_keys()
    teams = [x.name for x in await store.list_teams()]
    pick = rng.random()
    try:
        if pick < 0.15 or not idents:
            ident = await a.create_identity(SYSTEM, name=f"svc-{n}", owner=rng.choice(["o1", "o2"]),
                                            environment="dev", models=rng.choice([["m1"], ["m*"], ["*"], ["m1", "m2"]]),
                                            team=rng.choice([None, *teams]),
                                            roles=rng.choice([["invoker"], ["invoker", "operator"], ["auditor"]]))
            await a.issue_key(SYSTEM, ident.id, plane="data" if "invoker" in ident.roles else "control")
        elif pick < 0.35:
            ident = rng.choice(idents)
            await a.issue_key(SYSTEM, ident.id, plane=rng.choice(["data", "control"]))
        elif pick < 0.45 and keys:
            await a.revoke_key(SYSTEM, rng.choice(keys).id)
        elif pick < 0.52 and keys:
            await a.rotate_key(SYSTEM, rng.choice(keys).id, overlap_seconds=rng.choice([0, 3600]))
        elif pick < 0.60:
            await a.disable_identity(SYSTEM, rng.choice(idents).id)
        elif pick < 0.67:
            await a.enable_identity(SYSTEM, rng.choice(idents).id)
        elif pick < 0.74:
            await a.set_roles(SYSTEM, rng.choice(idents).id, rng.choice([["invoker"], ["auditor"], ["invoker", "admin"]]))
        elif pick < 0.82:
            await a.update_identity(SYSTEM, rng.choice(idents).id, models=rng.choice([["m2"], ["*"]]),
                                    team=rng.choice(teams) if teams else None, owner=rng.choice(["o1", "o3"]))
        elif pick < 0.87:
            await a.create_team(SYSTEM, f"team-{n}", owner="o1")
        elif pick < 0.91:
            await a.revoke_all(SYSTEM, identity_id=rng.choice(idents).id, reason="test")
        elif pick < 0.95:
            await a.offboard(SYSTEM, rng.choice(["o1", "o2", "o3"]), rng.choice([None, "o4"]))
        else:  # a version that changes no identity (as a policy change does)
            await store.apply(Writes(), a._event(SYSTEM, "policy.test", "x", {}))
    except GatewayError:
        pass  # a refused change (enable what is not disabled, a key of a disabled identity) changes nothing


@pytest.fixture()
async def replicas(store_url):
    store = SqlStore(store_url, timeout=30)
    await store.open()
    try:
        yield Replicas(store)
    finally:
        await store.close()


async def test_a_patched_registry_equals_a_whole_load_after_random_changes(replicas):
    r = replicas
    await r.follow()  # the first load is whole
    assert r.b.whole_loads == 1
    rng, most = random.Random(29), 0
    for n in range(150):
        await random_change(r, rng, n)
        if rng.random() < 0.3:  # B catches up after one change or after several
            await r.follow()
            most = max(most, len(r.b_registry))
    await r.follow()
    assert r.b.whole_loads == 1 and r.b.patches > 20, (r.b.whole_loads, r.b.patches)
    assert most >= 8  # the sequences held live keys to compare


async def test_a_replica_behind_the_kept_history_reloads_whole(replicas):
    r = replicas
    ident = await r.a.create_identity(SYSTEM, name="late", owner="o", environment="dev", models=["*"])
    key, _ = await r.a.issue_key(SYSTEM, ident.id)
    await r.follow()
    held = r.b._version
    await r.a.revoke_key(SYSTEM, key.id)  # version held + 1, its history pruned below
    await r.a.create_team(SYSTEM, "t", owner="o")  # held + 2, kept
    async with r.store.engine.begin() as conn:
        await conn.execute(delete(t.identity_changes).where(t.identity_changes.c.version == held + 1))
    await r.follow()  # equal to a whole load: the revocation is seen though its history is gone
    assert not r.b_registry.key_is_live(key.id, 0.0)
    assert (r.b.whole_loads, r.b.patches) == (2, 0)


async def test_old_history_is_pruned_as_versions_are_bumped(replicas):
    r = replicas
    async with r.store.engine.begin() as conn:
        await conn.execute(t.identity_changes.insert().values(version=0, kind="key", entity_id="k", ts=1.0))
    await r.a.create_team(SYSTEM, "t", owner="o")
    async with r.store.engine.connect() as conn:
        rows = list(await conn.execute(t.identity_changes.select()))
    assert [(x.kind, x.entity_id) for x in rows] == [("team", "t")]


async def test_a_version_that_went_backwards_or_a_first_load_is_whole(replicas):
    r = replicas
    await r.follow()
    await r.a.create_team(SYSTEM, "t", owner="o")
    await r.follow()
    version = await r.store.identity_version()
    assert await r.b.load(version - 1)  # a store restored from an older copy
    assert await r.b.load(version)
    assert (r.b.whole_loads, r.b.patches) == (2, 2)


def test_changes_are_told_exactly_or_not_at_all():
    rows = [(5, "key", "k1"), (6, "none", ""), (7, "identity", "i1"), (7, "team", "t")]
    got = since(rows, 4, 7)
    assert got is not None and (got.keys, got.identities, got.teams) == ({"k1"}, {"i1"}, {"t"})
    assert since(rows[1:], 4, 7) is None  # version 5 missing: pruned
    assert since(rows, 4, 8) is None  # version 8 not there (yet)
    assert since([*rows, (6, "all", "")], 4, 7) is None  # a write that cannot be followed by id


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
async def test_a_long_reload_counts_as_current_while_its_pages_keep_coming_and_stale_once_they_stop(replicas):
    """A whole reload longer than ``max_staleness_s`` (100,000 identities on a busy machine: bench/scale.py)
    keeps /readyz ready while it reads pages; one that stops reading goes stale as before."""
    store = replicas.store
    reading = True

    async def reload(version: int) -> bool:
        for _ in range(12 if reading else 16):  # a page every 0.25 s, 8 times within max_staleness_s
            if reading:
                await store.list_identities()
            await asyncio.sleep(0.25)
        return True

    sync = IdentitySync(store, reload, IdentitySettings(max_staleness_s=2.0, poll_interval_s=60))

    async def sample() -> list[bool]:
        seen = []
        while not sync.reloads:
            seen.append(sync.current)
            await asyncio.sleep(0.05)
        return seen

    try:
        _, seen = await asyncio.gather(sync.start(), sample())
        assert len(seen) > 10 and all(seen), seen
        assert sync.current
        reading = False
        sync._version = -1  # the version moved: a reload that reads nothing for 4 s
        task = asyncio.ensure_future(sync._catch_up())
        await asyncio.sleep(3.0)
        assert not sync.current
        await task
        assert sync.current
    finally:
        await sync.stop()
