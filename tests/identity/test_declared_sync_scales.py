"""Reconciling the config file's identities at start-up reads the file's own rows, not every identity and
key in the store (bench/scale.py: start-up grew by about a second per thousand identities created on the
control plane, each read and decoded twice more than the registry needs). Counted, not timed."""

from __future__ import annotations

import time

import pytest

from sluice.core.config import DeclaredIdentity
from sluice.core.types import ApiKey, Identity
from sluice.identity import Hasher, generate
from sluice.identity.declared import sync
from sluice.store import Writes
from sluice.store.sql import SqlStore

PEPPER = b"test-pepper-0123456789abcdef"


class CountingStore(SqlStore):
    """The real store, counting the identity and key rows its listings hand back."""

    rows = 0

    async def list_identities(self, **kw):
        out = await super().list_identities(**kw)
        self.rows += len(out)
        return out

    async def list_keys(self, *args, **kw):
        out = await super().list_keys(*args, **kw)
        self.rows += len(out)
        return out


@pytest.fixture()
async def store(store_url):
    s = CountingStore(store_url, timeout=60)  # a busy machine: the bound is the rows read, not the time
    await s.open()
    yield s
    await s.close()


async def test_a_restart_reads_only_the_files_rows_however_many_identities_the_store_holds(store):
    hasher, now = Hasher(PEPPER), time.time()
    writes = Writes()
    for i in range(100):  # made on the control plane: not the file's to reconcile
        writes.put_identity(Identity(id=f"id-{i}", name=f"api-{i}", owner="o", created_at=now, models=["*"]))
        writes.put_key(ApiKey(id=f"key-{i}", identity_id=f"id-{i}", hash=hasher.digest(generate("dev")),
                              display="slk_dev_…", created_at=now))
    await store.apply(writes)
    declared = [DeclaredIdentity(name="from-file", owner="o", models=["*"], keys=[generate("dev")])]
    assert await sync(store, hasher, declared) == 2  # the identity and its key

    store.rows = 0
    assert await sync(store, hasher, declared) == 0  # a restart: nothing differs
    assert store.rows <= 2, store.rows  # the file's identity and key, not the 200 rows beside them

    assert await sync(store, hasher, []) == 2  # dropped from the file: its key revoked, the identity disabled
    gone = await store.find_identity("from-file")
    assert gone is not None and gone.disabled_at is not None
    assert len(await store.list_identities()) == 100  # the control plane's identities untouched
    assert all(k.revoked_at is None for k in await store.list_keys(source="api"))
