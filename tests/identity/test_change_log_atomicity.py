"""A control-plane change and its change-log entry are written in one transaction: if either
cannot be written, neither is (SQLite and Postgres). And the case that used to split them, an
offboarding of an owner with a long name on Postgres, now lands whole."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from sluice.core.errors import Conflict
from sluice.core.types import ChangeEvent, Identity
from sluice.store import Writes
from sluice.store.sql import SqlStore
from store.pg_databases import drop_pg_database, fresh_pg_database
from support import start_gateway


@pytest.fixture()
async def store(store_url):
    s = SqlStore(store_url)
    await s.open()
    yield s
    await s.close()


def _ident(name: str) -> Identity:
    return Identity(id=f"id-{uuid.uuid4().hex[:8]}", name=name, owner="o", created_at=time.time())


def _event(event_id: str | None = None) -> ChangeEvent:
    return ChangeEvent(id=event_id or uuid.uuid4().hex, ts=time.time(), actor="t", action="identity.create",
                       target="x", source_ip=None, detail={})


async def test_a_change_whose_record_cannot_be_written_leaves_no_change(store):
    taken = _event()
    await store.record_change(taken)
    version = await store.identity_version()
    ident = _ident("never")
    with pytest.raises(Conflict):  # the record's id is taken: the record cannot be written
        await store.apply(Writes().put_identity(ident), _event(taken.id))
    assert await store.get_identity(ident.id) is None
    assert await store.identity_version() == version


async def test_a_record_whose_change_cannot_be_written_is_not_written(store):
    await store.apply(Writes().put_identity(_ident("taken")), _event())
    before = await store.list_changes()
    event = _event()
    with pytest.raises(Conflict):  # the name is taken: the change cannot be written
        await store.apply(Writes().put_identity(_ident("taken")), event)
    assert [c.id for c in await store.list_changes()] == [c.id for c in before]


async def test_every_identity_change_moves_the_identity_state_version(store):
    v0 = await store.identity_version()
    ident = _ident("moves")
    await store.apply(Writes().put_identity(ident), _event())
    v1 = await store.identity_version()
    await store.revoke_key("no-such-key", time.time())
    assert v0 < v1 < await store.identity_version()


async def test_offboarding_an_owner_with_a_long_name_lands_with_its_record_on_postgres(sim, tmp_path):
    url = await fresh_pg_database()
    owner = "o" * 200 + "@example.com"  # longer than the change log's target column used to be
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": owner, "models": ["sim-small"]}],
                      extra={"store": {"url": url}})
    try:
        r = g.admin("POST", f"/admin/owners/{owner}/offboard", json={})
        assert r.status_code == 200, r.text
        changes = g.admin("GET", "/admin/changes").json()["data"]
        assert any(c["action"] == "owner.offboard" and c["target"] == owner for c in changes)
        assert httpx.get(g.v1 + "/models", headers={"Authorization": f"Bearer {g.keys['app']}"}).status_code == 401
        too_long = g.admin("POST", f"/admin/owners/{'o' * 300}/offboard", json={})
        assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "owner"
    finally:
        g.stop()
        await drop_pg_database(url)
