"""A long listing of identities or keys is read a page at a time, each page one store call within the
store's timeout (bench/scale.py: with 100,000 identities on a busy machine one read outlasted the 5 s
timeout, so start-up failed, and so would every reload after a change). Counted: pages of 7 rows."""

from __future__ import annotations

import time

import pytest

import sluice.store.sql as sql
from sluice.core.types import ApiKey, Identity
from sluice.store import Writes
from sluice.store.sql import SqlStore


class PageCounting(SqlStore):
    pages = 0

    async def _page(self, q):
        self.pages += 1
        return await super()._page(q)


@pytest.fixture()
async def store(store_url, monkeypatch):
    monkeypatch.setattr(sql, "_PAGE_ROWS", 7)
    s = PageCounting(store_url, timeout=60)  # a busy machine: the bound is the pages, not the time
    await s.open()
    yield s
    await s.close()


async def test_long_listings_are_read_in_pages_and_come_back_whole_and_in_order(store):
    now = time.time()
    writes = Writes()
    for i in range(30):
        writes.put_identity(Identity(id=f"id-{i:02d}", name=f"n-{(i * 7) % 30:02d}", owner="o", created_at=now))
        writes.put_key(ApiKey(id=f"key-{i:02d}", identity_id=f"id-{i:02d}", hash=f"{i:064x}", display="d",
                              created_at=now - i))  # the newest key has the lowest id
    await store.apply(writes)

    store.pages = 0
    names = [i.name for i in await store.list_identities()]
    assert names == sorted(f"n-{i:02d}" for i in range(30))
    assert store.pages == 5  # 7 + 7 + 7 + 7 + 2 rows: every page a call of its own

    store.pages = 0
    keys = await store.list_keys()
    assert [k.id for k in keys] == [f"key-{i:02d}" for i in reversed(range(30))]  # by age, oldest first
    assert store.pages == 5
    assert [k.id for k in await store.list_keys("id-03")] == ["key-03"]
