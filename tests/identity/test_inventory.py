"""The inventory of every identity, with access-review flags, on a seeded store; offboarding."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time

import pytest

from sluice.core.types import ApiKey, Identity, UsageRecord
from sluice.identity import Hasher, display, generate
from sluice.store import open_store
from support import PEPPER, start_gateway

DAY = 86400.0
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def seed(db_url: str) -> dict[str, str]:
    """Identities in every state an access review cares about, written straight to the store."""
    now = time.time()
    h = Hasher(PEPPER.encode())
    secrets = {}

    async def go() -> None:
        s = open_store(db_url)
        await s.open()

        async def ident(name: str, owner: str, models: list[str], created_days: float, **kw) -> Identity:
            i = Identity(id=f"id-{name}", name=name, owner=owner, models=models, created_at=now - created_days * DAY, **kw)
            await s.put_identity(i)
            return i

        async def key(i: Identity, ttl_days: float | None, created_days: float, last_used_days: float | None = None) -> None:
            secret = generate(i.environment)
            secrets[i.name] = secret
            await s.put_key(ApiKey(id=f"key-{i.name}", identity_id=i.id, hash=h.digest(secret), display=display(secret),
                                   created_at=now - created_days * DAY, created_by="seed",
                                   expires_at=None if ttl_days is None else now - created_days * DAY + ttl_days * DAY,
                                   last_used_at=None if last_used_days is None else now - last_used_days * DAY))

        await key(await ident("fresh", "alice@example.com", ["sim-small"], 1), 90, 1)
        stale = await ident("stale", "bob@example.com", ["sim-small"], 120)
        await key(stale, 365, 120, last_used_days=45)
        await s.write_usage([UsageRecord(request_id="old", ts=now - 45 * DAY, identity_id=stale.id, key_id="key-stale",
                                         endpoint="chat.completions", model="sim-small", upstream="sim", status=200)])
        await key(await ident("expiring", "alice@example.com", ["sim-small"], 85), 88, 85)
        await key(await ident("broad", "bob@example.com", ["sim-small", "sim-embed"], 10), 90, 10)
        await key(await ident("wild", "carol@example.com", ["*"], 10), 90, 10)
        await ident("auditor-bot", "carol@example.com", [], 5, roles=["auditor"])
        await s.close()

    asyncio.run(go())
    return secrets


@pytest.fixture(scope="module")
def seeded(sim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inventory")
    secrets = seed(f"sqlite:///{tmp}/sluice.db")
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}],
                      identities=[{"name": "gitops", "owner": "dave@example.com", "models": ["sim-small"]}])
    for name in ("broad", "wild"):
        assert g.post("/v1/chat/completions", secrets[name], json=CHAT).status_code == 200
    yield g, secrets
    g.stop()


def cli(g, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": g.admin_key, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "sluice", "identities", *args], capture_output=True, text=True, env=env, timeout=60)


def test_inventory_flags_every_review_finding(seeded):
    g, _ = seeded
    r = cli(g, "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) >= {"fresh", "stale", "expiring", "broad", "wild", "auditor-bot", "gitops"}
    assert "never-used" in rows["fresh"]["flags"]
    assert "unused-30d" in rows["stale"]["flags"]
    assert "expiring-7d" in rows["expiring"]["flags"]
    assert "no-expiry" in rows["gitops"]["flags"]  # a key from the config file has no expiry
    assert "broader-than-use" in rows["broad"]["flags"] and rows["broad"]["unused_scopes"] == ["sim-embed"]
    assert rows["broad"]["models_used"] == ["sim-small"]
    assert "broader-than-use" in rows["wild"]["flags"]
    assert rows["fresh"]["flags"] == ["never-used"]
    assert rows["auditor-bot"]["roles"] == ["auditor"] and rows["auditor-bot"]["credentials"] == []
    cred = rows["stale"]["credentials"][0]
    assert cred["created_by"] == "seed" and cred["age_days"] == pytest.approx(120, abs=0.1)
    assert rows["broad"]["last_used_at"] > time.time() - 120


def test_inventory_table_is_printed_for_people(seeded):
    g, _ = seeded
    r = cli(g)
    assert r.returncode == 0, r.stderr
    for needle in ("fresh", "never-used", "unused-30d", "expiring-7d", "no-expiry", "broader-than-use", "bob@example.com"):
        assert needle in r.stdout


def test_inventory_csv_for_access_reviews(seeded):
    g, _ = seeded
    r = cli(g, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    by = {row["name"]: row for row in rows}
    assert "unused-30d" in by["stale"]["flags"] and by["broad"]["unused_scopes"] == "sim-embed"


def test_no_secret_or_hash_in_the_inventory(seeded):
    g, secrets = seeded
    r = cli(g, "--format", "json")
    for s in secrets.values():
        assert s not in r.stdout
    assert '"hash"' not in r.stdout


def test_offboarding_an_owner_revokes_everything_in_one_recorded_step(seeded):
    g, secrets = seeded
    assert g.post("/v1/chat/completions", secrets["broad"], json=CHAT).status_code == 200
    r = cli(g, "offboard", "bob@example.com")
    assert r.returncode == 0, r.stderr
    assert g.post("/v1/chat/completions", secrets["broad"], json=CHAT).status_code == 401
    assert g.post("/v1/chat/completions", secrets["stale"], json=CHAT).status_code == 401
    changes = g.admin("GET", "/admin/changes?limit=200").json()["data"]
    step = [c for c in changes if c["action"] == "owner.offboard" and c["target"] == "bob@example.com"]
    assert len(step) == 1 and set(step[0]["detail"]["identities"]) == {"id-stale", "id-broad"}


def test_offboarding_with_reassignment_keeps_workloads_running(seeded):
    g, secrets = seeded
    r = cli(g, "offboard", "carol@example.com", "--reassign-to", "erin@example.com")
    assert r.returncode == 0, r.stderr
    assert g.post("/v1/chat/completions", secrets["wild"], json=CHAT).status_code == 200
    rows = {row["name"]: row for row in json.loads(cli(g, "--format", "json").stdout)}
    assert rows["wild"]["owner"] == rows["auditor-bot"]["owner"] == "erin@example.com"
