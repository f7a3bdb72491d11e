"""The control plane: separate listener, admin credentials only, every change recorded."""

from __future__ import annotations

import time

import httpx
import pytest


def test_control_plane_is_not_served_on_the_data_port(gw):
    r = httpx.get(gw.url + "/admin/identities", headers={"Authorization": f"Bearer {gw.admin_key}"})
    assert r.status_code == 404


def test_identity_lifecycle_is_recorded_in_the_change_log(gw):
    name = f"lifecycle-{time.time_ns() % 10**9}"
    created = gw.admin("POST", "/admin/identities", json={"name": name, "owner": "sre@example.com",
                                                        "environment": "prod", "models": ["sim-*"]})
    assert created.status_code == 201
    ident = created.json()
    assert ident["environment"] == "prod" and ident["created_by"] == "config-admin-0"
    key = gw.admin("POST", f"/admin/identities/{ident['id']}/keys", json={"ttl_days": 1}).json()
    assert key["key"].startswith("slk_prod_") and key["expires_at"] - time.time() == pytest.approx(86400, abs=60)
    gw.admin("POST", f"/admin/keys/{key['id']}/revoke")
    changes = gw.admin("GET", "/admin/changes?limit=50").json()["data"]
    actions = [(c["action"], c["target"]) for c in changes]
    assert ("identity.create", ident["id"]) in actions
    assert ("key.issue", key["id"]) in actions and ("key.revoke", key["id"]) in actions
    assert all(c["source_ip"] == "127.0.0.1" for c in changes if c["target"] in (ident["id"], key["id"]))


@pytest.mark.parametrize("body,param", [
    ({"name": "Bad Name", "owner": "o"}, "name"),
    ({"name": "ok-name", "owner": " "}, "owner"),
    ({"name": "ok-name", "owner": "o", "environment": "staging"}, None),
    ({"name": "ok-name", "owner": "o", "extra": 1}, None),
    ({"owner": "o"}, None),
])
def test_invalid_identity_is_refused_with_400(gw, body, param):
    r = gw.admin("POST", "/admin/identities", json=body)
    assert r.status_code == 400
    if param:
        assert r.json()["error"]["param"] == param


def test_duplicate_identity_is_409(gw):
    r = gw.admin("POST", "/admin/identities", json={"name": "app", "owner": "o"})
    assert r.status_code == 409


def test_ttl_beyond_policy_maximum_is_refused(gw):
    ident = gw.admin("POST", "/admin/identities", json={"name": f"ttl-{time.time_ns() % 10**9}", "owner": "o"}).json()
    r = gw.admin("POST", f"/admin/identities/{ident['id']}/keys", json={"ttl_days": 10_000})
    assert r.status_code == 400 and r.json()["error"]["param"] == "ttl_days"


def test_unknown_ids_are_404(gw):
    assert gw.admin("GET", "/admin/identities/id-nope").status_code == 404
    assert gw.admin("POST", "/admin/keys/key-nope/revoke").status_code == 404


def test_config_declared_identities_are_listed(gw):
    names = {i["name"]: i for i in gw.admin("GET", "/admin/identities").json()["data"]}
    assert {"app", "other", "prod-app"} <= set(names)
    assert names["app"]["source"] == "config"


def test_usage_summary_counts_requests_per_identity(gw):
    """Two identities on one model: a row each, with each one's own count (grouping by model alone
    would give one row of 5)."""
    ids = {i["name"]: i["id"] for i in gw.admin("GET", "/admin/identities").json()["data"]}
    since = time.time()
    for who, n in (("app", 3), ("prod-app", 2)):
        for _ in range(n):
            r = gw.post("/v1/chat/completions", gw.keys[who],
                        json={"model": "sim-small", "messages": [{"role": "user", "content": "x"}], "max_tokens": 2})
            assert r.status_code == 200, r.text
    rows = gw.admin("GET", f"/admin/usage/summary?since={since}").json()["data"]
    got = {(r["identity_id"], r["model"]): (r["requests"], r["errors"], r["completion_tokens"]) for r in rows}
    assert got == {(ids["app"], "sim-small"): (3, 0, 6), (ids["prod-app"], "sim-small"): (2, 0, 4)}, rows


def test_bad_query_parameter_is_400_not_500(gw):
    assert gw.admin("GET", "/admin/usage?since=yesterday").status_code == 400


@pytest.mark.parametrize("method, path, body, param", [
    ("POST", "/admin/policy/rollback", {"reason": "x", "version": 2**70}, "version"),
    ("POST", "/admin/policy/changes", {"reason": "x", "base": 2**64, "sections": {}}, "base"),
    ("PUT", "/admin/switches/models/sim-small/limit", {"reason": "x", "requests_per_minute": 2**70}, "requests_per_minute"),
    ("POST", "/admin/policy/changes", {"reason": "x", "sections": {"limits": {"rules": [
        {"name": "huge", "requests_per_minute": 2**60}]}}}, "sections"),
])
def test_an_integer_past_what_every_peer_reads_exactly_is_400_naming_it_not_500(gw, method, path, body, param):
    """2**53 - 1 is the ceiling of every integer the control plane takes (a Lua counter, a JSON client, a float)."""
    r = gw.admin(method, path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert param in (err.get("param") or "") + err["message"], err
