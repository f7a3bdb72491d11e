"""The store's half of atomic activation: the active pointer moves only from the version a change was
built on, and a refused activation leaves nothing behind (no version row, no change set, no change
record). SQLite and Postgres."""

from __future__ import annotations

import pytest

from sluice.core.errors import Conflict
from sluice.core.types import ChangeEvent
from sluice.store import Writes, open_store


@pytest.fixture()
async def store(store_url):
    s = open_store(store_url)
    await s.open()
    yield s
    await s.close()


def version(n: int, parent: int | None) -> dict:
    return {"id": n, "parent": parent, "author": "t", "created_at": 1.0, "reason": "r", "kind": "change",
            "hash": "0" * 64, "document": "{}"}


def changeset(cid: str) -> dict:
    return {"id": cid, "base": 1, "author": "t", "created_at": 1.0, "reason": "r", "status": "applied",
            "sections": "[]", "needs_approval": False, "document": "{}", "decided_by": None, "decided_at": None,
            "decision_reason": None, "version": 2}


def event(eid: str) -> ChangeEvent:
    return ChangeEvent(id=eid, ts=1.0, actor="t", action="policy.test", target="x")


async def test_activation_is_compare_and_set_and_a_refused_one_leaves_nothing(store):
    assert await store.active_policy() == 0
    await store.apply(Writes().put_policy_version(version(1, None)).activate_policy(1, 0), event("e1"))
    assert await store.active_policy() == 1
    # built on version 0, but 1 is active: refused, and nothing of it is kept
    stale = Writes().put_policy_version(version(2, 0)).activate_policy(2, 0).put_changeset(changeset("cs-stale"))
    with pytest.raises(Conflict) as refused:
        await store.apply(stale, event("e-stale"))
    assert refused.value.code == "stale_policy"
    assert await store.active_policy() == 1
    assert await store.policy_version(2) is None
    assert await store.changeset("cs-stale") is None
    assert "e-stale" not in {c.id for c in await store.list_changes()}
    # built on the active version: accepted, with its change set and record
    await store.apply(Writes().put_policy_version(version(2, 1)).activate_policy(2, 1).put_changeset(changeset("cs-ok")),
                      event("e2"))
    assert await store.active_policy() == 2
    assert (await store.changeset("cs-ok"))["version"] == 2
    assert [v["id"] for v in await store.list_policy_versions()] == [2, 1]
    assert "document" not in (await store.list_policy_versions())[0]
