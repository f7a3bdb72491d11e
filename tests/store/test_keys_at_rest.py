"""Keys at rest, on SQLite and Postgres: the stored value is HMAC-SHA256 of the key under the
server pepper (computed here with the standard library, not sluice's code), and nothing stored
holds the key or its random part."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import sqlite3

import asyncpg
import pytest

from pg_databases import drop_pg_database, fresh_pg_database
from support import PEPPER, start_gateway


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/keys.db"
        return
    url = asyncio.run(fresh_pg_database())
    yield url
    asyncio.run(drop_pg_database(url))


def stored_keys(url: str) -> dict[str, tuple[str, str]]:
    """key id -> (hash, display), read straight from the database."""
    query = "select id, hash, display from api_keys"
    if url.startswith("sqlite"):
        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        rows = db.execute(query).fetchall()
        db.close()
    else:
        async def fetch():
            conn = await asyncpg.connect(url)
            try:
                return [tuple(r) for r in await conn.fetch(query)]
            finally:
                await conn.close()
        rows = asyncio.run(fetch())
    return {i: (h, d) for i, h, d in rows}


def test_a_key_is_stored_as_its_hmac_under_the_pepper_and_nothing_else(sim, tmp_path, store_url):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"store": {"url": store_url}})
    try:
        ident = g.admin("POST", "/admin/identities", json={"name": "b", "owner": "o", "models": ["*"]}).json()
        issued = g.admin("POST", f"/admin/identities/{ident['id']}/keys", json={}).json()
    finally:
        g.stop()
    rows = stored_keys(store_url)
    want = hmac.new(PEPPER.encode(), issued["key"].encode(), hashlib.sha256).hexdigest()
    assert rows[issued["id"]][0] == want
    config_key = hmac.new(PEPPER.encode(), g.keys["a"].encode(), hashlib.sha256).hexdigest()
    assert config_key in {h for h, _ in rows.values()}  # keys from the config file too
    for secret in (issued["key"], g.keys["a"]):
        assert hashlib.sha256(secret.encode()).hexdigest() not in {h for h, _ in rows.values()}  # keyed, not a bare hash
        for h, display in rows.values():
            assert secret[9:39] not in h + display
