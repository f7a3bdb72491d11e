"""What the config file changes is recorded like any other change: the teams, identities and keys
it declares are made so at start as changes by the actor ``config``, one audit entry each with the
before/after of the rows it touched. A restart with the same file records nothing; a changed file
records one entry per difference; replicas starting together on one store record each change once."""

from __future__ import annotations

import asyncio
import json

from sluice.audit import AuditLog, MerkleJournal
from sluice.core.audit_settings import Audit
from sluice.core.config import DeclaredIdentity, Security
from sluice.identity import CredentialRegistry, Hasher, IdentityService, generate
from sluice.store.sql import SqlStore
from support import Gateway, Sim


def _config(sim: Sim, identities: list[dict]) -> dict:
    return {"upstreams": [{"name": "sim", "base_url": sim.url + "/v1"}], "models": [{"name": "sim-small", "upstream": "sim"}],
            "identities": identities, "teams": [{"name": "shop", "owner": "shop@example.com"}],
            "audit": {"checkpoint_interval_s": 0}}


def _entries(g: Gateway) -> list[dict]:
    got = g.admin("GET", "/admin/audit/entries", params={"since": "0", "limit": 100000})
    assert got.status_code == 200, got.text
    return got.json()["data"]


def _started(tmp_path, config: dict, keys: dict[str, str], admin: str) -> list[dict]:
    """Start, read the whole log and check it verifies, stop."""
    g = Gateway(tmp_path, config, keys, admin)
    try:
        assert g.admin("GET", "/admin/audit/verify").json()["ok"]
        return _entries(g)
    finally:
        g.stop()


def test_the_config_files_changes_are_entries_by_config_once_per_change_and_none_on_a_plain_restart(sim, tmp_path):
    keys = {"app": generate("dev"), "batch": generate("dev"), "extra": generate("dev")}
    app = {"name": "app", "owner": "a@example.com", "models": ["sim-small"], "team": "shop", "keys": [keys["app"]]}
    batch = {"name": "batch", "owner": "b@example.com", "models": ["sim-small"], "keys": [keys["batch"]]}
    admin = generate("prod", kind="admin")

    first = _started(tmp_path, _config(sim, [app, batch]), keys, admin)
    by_config = [e for e in first if e["actor"] == "config" and not e["action"].startswith("policy.")]  # not the policy seed
    assert sorted((e["action"], e["detail"].get("identity_id", e["target"])) for e in by_config) == [
        ("identity.create", "cfg-app"), ("identity.create", "cfg-batch"),
        ("key.issue", "cfg-app"), ("key.issue", "cfg-batch"), ("team.create", "shop")]
    assert all(e["change_id"] and e["before"] != e["after"] for e in by_config)
    created = next(e for e in by_config if e["action"] == "identity.create" and e["target"] == "cfg-app")

    # the same file again: nothing new
    assert _started(tmp_path, _config(sim, [app, batch]), keys, admin) == first

    # a changed file: the owner of app, a second key for app, batch gone (its key with it)
    app2 = {**app, "owner": "new-owner@example.com", "keys": [keys["app"], keys["extra"]]}
    after = _started(tmp_path, _config(sim, [app2]), keys, admin)
    assert after[:len(first)] == first
    new = after[len(first):]
    assert all(e["actor"] == "config" for e in new), new
    assert sorted((e["action"], e["detail"].get("identity_id", e["target"])) for e in new) == [
        ("identity.disable", "cfg-batch"), ("identity.update", "cfg-app"), ("key.issue", "cfg-app"),
        ("key.revoke", "cfg-batch")]
    update = next(e for e in new if e["action"] == "identity.update")
    assert update["detail"] == {"owner": {"from": "a@example.com", "to": "new-owner@example.com"}}
    # before/after as every change has: this change starts from what the creation left
    assert update["before"] == created["after"] != update["after"]
    assert not any(k in json.dumps(after) for k in keys.values())  # no secret in any entry


async def test_replicas_syncing_one_config_at_once_record_each_change_once(store_url):
    hasher = Hasher(b"a-pepper-of-at-least-16-chars")
    declared = [DeclaredIdentity(name=f"svc{i}", owner="o@example.com", models=["m"], keys=[generate("dev")])
                for i in range(5)]
    stores = [SqlStore(store_url) for _ in range(2)]
    for s in stores:
        s.journal = MerkleJournal()
        await s.open()
    try:
        services = [IdentityService(s, CredentialRegistry(hasher), hasher, Security()) for s in stores]
        await asyncio.gather(*(svc.sync_declared(declared) for svc in services))
        await services[1].sync_declared(declared)  # a restart: nothing left to do
        changes = await stores[0].list_changes()
        assert sorted(c.action for c in changes) == ["identity.create"] * 5 + ["key.issue"] * 5
        assert {c.actor for c in changes} == {"config"}
        report = await AuditLog(stores[0], Audit(origin="test.sluice/config"), None).verify()
        assert report.ok and report.size == 10, report.as_dict()
    finally:
        for s in stores:
            await s.close()
