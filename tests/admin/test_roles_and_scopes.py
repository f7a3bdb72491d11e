"""Separation of duties: every control-plane endpoint with every role, and the grant rules."""

from __future__ import annotations

import time

import httpx
import pytest

from support import Sim, start_gateway

from sluice.admin.api import AdminApi

O, K, A, W = "operator", "key-admin", "auditor", "owner"
CONTROL_ROLES = [O, K, A, W]

# Written by hand from the README's role and endpoint tables (not read from the code under
# test): (method, path, the status an allowed caller gets for the request this test sends,
# the roles allowed). Ids name nothing, so allowed calls on one thing are a documented 404,
# and bodies are empty, so allowed writes are a documented 400.
SURFACE: list[tuple[str, str, int, set[str]]] = [
    ("GET", "/admin/whoami", 200, {O, K, A, W}),
    ("GET", "/admin/openapi.json", 200, {O, K, A, W}),
    ("GET", "/admin/identities", 200, {O, K, A, W}),
    ("POST", "/admin/identities", 400, {K}),
    ("GET", "/admin/identities/inventory", 200, {A}),
    ("GET", "/admin/identities/id-nope", 404, {O, K, A, W}),
    ("PATCH", "/admin/identities/id-nope", 404, {K}),
    ("DELETE", "/admin/identities/id-nope", 404, {K}),
    ("POST", "/admin/identities/id-nope/enable", 404, {K}),
    ("PUT", "/admin/identities/id-nope/roles", 400, {W}),
    ("GET", "/admin/identities/id-nope/keys", 404, {K, A}),
    ("POST", "/admin/identities/id-nope/keys", 404, {K}),
    ("POST", "/admin/keys/find", 400, {K, A}),  # issue 26: a leaked key traced (keys:read)
    ("POST", "/admin/keys/key-nope/rotate", 404, {K}),
    ("POST", "/admin/keys/key-nope/revoke", 404, {K}),
    ("POST", "/admin/owners/nobody@example.com/offboard", 200, {K}),
    ("GET", "/admin/teams", 200, {O, K, A, W}),
    ("POST", "/admin/teams", 400, {K}),
    ("GET", "/admin/routes", 200, {O, A}),
    ("PUT", "/admin/routes/no-such-model", 400, {O}),
    ("GET", "/admin/routes/decisions/req-nope", 404, {O, A}),
    ("GET", "/admin/routing", 200, {O, A}),
    ("GET", "/admin/registry/verify", 200, {O, A}),  # issue 28: every replica's digest against the approved one
    ("PUT", "/admin/routing/routes/no-such-route/weights", 400, {O}),
    ("POST", "/admin/routing/routes/no-such-route/rollback", 404, {O}),
    ("PUT", "/admin/registry/no-such-model/versions/v-nope/approval", 404, {O}),
    ("POST", "/admin/signing-keys/rotate", 200, {K}),
    ("GET", "/admin/limits", 200, {O, A}),
    ("PUT", "/admin/limits", 400, {O}),
    ("GET", "/admin/throttles", 200, {O, A}),
    ("DELETE", "/admin/throttles/id-nope", 404, {O}),
    ("GET", "/admin/usage", 200, {O, A}),
    ("GET", "/admin/usage/summary", 200, {O, A}),
    ("GET", "/admin/changes", 200, {A}),
    ("GET", "/admin/audit/entries", 200, {A}),
    ("GET", "/admin/audit/proof/inclusion", 400, {A}),
    ("GET", "/admin/audit/proof/consistency", 400, {A}),
    ("GET", "/admin/audit/checkpoints", 200, {A}),
    ("POST", "/admin/audit/checkpoint", 200, {A}),
    ("GET", "/admin/audit/public-key", 200, {A}),
    ("GET", "/admin/audit/verify", 200, {A}),
    ("GET", "/admin/dashboard", 200, {O, A}),
    ("GET", "/admin/openapi.json", 200, {O, K, A, W}),
    # versioned policy and incident switches (issue 11): operators change, auditors read, key-admins revoke
    ("GET", "/admin/policy", 200, {O, A}),
    ("GET", "/admin/switches", 200, {O, A}),
    ("GET", "/admin/policy/versions", 200, {O, A}),
    ("GET", "/admin/policy/versions/v-nope", 404, {O, A}),
    ("GET", "/admin/policy/changes", 200, {O, A}),
    ("POST", "/admin/policy/changes", 400, {O}),
    ("POST", "/admin/cache/purge", 400, {O}),  # issue 27: names none of identity, team, model, route
    ("GET", "/admin/policy/changes/cs-nope", 404, {O, A}),
    ("POST", "/admin/policy/changes/cs-nope/approve", 400, {O}),
    ("POST", "/admin/policy/changes/cs-nope/reject", 400, {O}),
    ("POST", "/admin/policy/rollback", 400, {O}),
    ("POST", "/admin/switches/targets/t-nope@v/disable", 400, {O}),
    ("POST", "/admin/switches/targets/t-nope@v/enable", 400, {O}),
    ("POST", "/admin/switches/routes/no-such-route/disable", 400, {O}),
    ("POST", "/admin/switches/routes/no-such-route/enable", 400, {O}),
    ("PUT", "/admin/switches/models/no-such-model/limit", 400, {O}),
    ("DELETE", "/admin/switches/models/no-such-model/limit", 404, {O}),
    ("POST", "/admin/switches/freeze", 400, {O}),
    ("POST", "/admin/switches/unfreeze", 400, {O}),
    ("POST", "/admin/switches/revoke", 400, {K}),
    ("GET", "/admin/tool-approvals", 200, {O, A}),
    ("GET", "/admin/tool-approvals/apv-nope", 404, {O, A}),
    ("POST", "/admin/tool-approvals/apv-nope/decision", 400, {O}),
    ("GET", "/admin/tool-decisions", 200, {O, A}),
    ("GET", "/admin/mcp/servers", 200, {O, A}),  # issue 25
    ("GET", "/admin/mcp/tools", 200, {O, A}),
    ("POST", "/admin/mcp/tools/files__nope/approve", 400, {O}),
    ("POST", "/admin/mcp/tools/files__nope/reject", 400, {O}),
]
_DOCUMENTED_4XX = {400: "invalid_request", 404: "not_found"}
_PARAMS = {"identity_id": "id-nope", "key_id": "key-nope", "owner": "nobody@example.com", "model": "no-such-model",
           "request_id": "req-nope", "route": "no-such-route", "version": "v-nope", "changeset_id": "cs-nope",
           "target": "t-nope@v", "approval_id": "apv-nope", "tool": "files__nope"}


def call(g, method: str, path: str, key: str | None, body: dict | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, g.admin_url + path, headers=headers, json=body if method in ("POST", "PUT", "PATCH") else None,
                         timeout=10)


def make(g, roles: list[str], models: list[str] | None = None) -> tuple[dict, str]:
    name = f"r-{'-'.join(roles)}-{time.time_ns() % 10**9}"
    ident = g.admin("POST", "/admin/identities", json={"name": name, "owner": "sec@example.com", "roles": roles,
                                                       "models": models or []})
    assert ident.status_code == 201, ident.text
    ident = ident.json()
    plane = "control" if set(roles) - {"invoker"} else "data"
    key = g.admin("POST", f"/admin/identities/{ident['id']}/keys", json={"plane": plane})
    assert key.status_code == 201, key.text
    return ident, key.json()["key"]


@pytest.fixture(scope="module")
def principals(gw):
    return {role: make(gw, [role]) for role in CONTROL_ROLES}


def test_the_hand_written_table_covers_the_whole_surface_and_all_of_it_needs_a_key(gw):
    served = {(m, p.format(**_PARAMS)) for m, p, _, _ in AdminApi.endpoints(AdminApi.__new__(AdminApi))}
    assert served == {(m, p) for m, p, _, _ in SURFACE}  # a new endpoint must be added to the table by hand
    for method, path, _, _ in SURFACE:
        assert call(gw, method, path, None).status_code == 401, (method, path)


def test_every_endpoint_with_every_role(gw, principals):
    wrong = []
    for role, (_, key) in principals.items():
        for method, path, ok_status, allowed in SURFACE:
            r = call(gw, method, path, key, {})
            code = r.json()["error"]["code"] if r.status_code >= 400 else None
            if role in allowed and (r.status_code != ok_status or code != _DOCUMENTED_4XX.get(ok_status)):
                wrong.append(f"{role} {method} {path}: {r.status_code} {r.text[:120]}, expected {ok_status}")
            if role not in allowed and (r.status_code != 403 or code != "missing_scope"):
                wrong.append(f"{role} not refused {method} {path}: {r.status_code}")
    assert not wrong, "\n".join(wrong)


def test_data_plane_keys_are_refused_by_every_endpoint(gw):
    for method, path, _, _ in SURFACE:
        r = call(gw, method, path, gw.keys["app"], {})
        assert r.status_code == 401 and r.json()["error"]["code"] == "wrong_plane", (method, path)


def test_infrastructure_endpoints_are_public_on_the_control_port(gw):
    for path in ("/metrics", "/healthz", "/readyz"):
        assert httpx.get(gw.admin_url + path).status_code == 200


def test_an_operator_moves_a_model_to_another_upstream_but_cannot_issue_keys(sim, tmp_path):
    other = Sim(tmp_path)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"},
                                           {"name": "other", "base_url": other.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "o", "models": ["*"]}])
    try:
        _, op = make(g, [O])
        app = next(i for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == "app")
        assert call(g, "POST", f"/admin/identities/{app['id']}/keys", op, {}).status_code == 403
        chat = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert g.post("/v1/chat/completions", g.keys["app"], json=chat).status_code == 200
        before = other.stats()["chat_requests"]
        r = call(g, "PUT", "/admin/routes/sim-small", op, {"upstream": "other"})
        assert r.status_code == 200 and r.json()["upstream"] == "other"
        assert [g.post("/v1/chat/completions", g.keys["app"], json=chat).status_code for _ in range(3)] == [200] * 3
        assert other.stats()["chat_requests"] - before == 3  # the traffic moved
    finally:
        g.stop()
        other.stop()


def test_a_key_admin_issues_keys_but_cannot_change_routing(gw, principals):
    _, ka = principals["key-admin"]
    assert call(gw, "PUT", "/admin/routes/sim-small", ka, {"upstream": "sim"}).status_code == 403
    ident, _ = make(gw, ["invoker"], ["sim-small"])
    r = call(gw, "POST", f"/admin/identities/{ident['id']}/keys", ka, {})
    assert r.status_code == 201 and r.json()["key"].startswith("slk_dev_")


def test_a_key_admin_cannot_mint_a_key_stronger_than_itself(gw, principals):
    _, ka = principals["key-admin"]
    owner_ident, _ = principals["owner"]
    r = call(gw, "POST", f"/admin/identities/{owner_ident['id']}/keys", ka, {"plane": "control"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "grant_beyond_own"


def test_an_owner_cannot_grant_a_role_it_does_not_hold(gw, principals):
    _, owner = principals["owner"]
    auditor_ident, _ = principals["auditor"]
    r = call(gw, "PUT", f"/admin/identities/{auditor_ident['id']}/roles", owner, {"roles": ["auditor", "operator"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "grant_beyond_own"


def test_no_principal_changes_its_own_roles(gw):
    ident, key = make(gw, ["owner", "auditor"])
    r = call(gw, "PUT", f"/admin/identities/{ident['id']}/roles", key, {"roles": ["owner"]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "self_grant"


def test_a_grant_applies_on_the_very_next_request(gw):
    _, granter = make(gw, ["owner", "operator"])
    target, target_key = make(gw, ["auditor"])
    assert call(gw, "PUT", "/admin/routes/sim-small", target_key, {"upstream": "sim"}).status_code == 403
    r = call(gw, "PUT", f"/admin/identities/{target['id']}/roles", granter, {"roles": ["auditor", "operator"]})
    assert r.status_code == 200, r.text
    assert call(gw, "PUT", "/admin/routes/sim-small", target_key, {"upstream": "sim"}).status_code == 200


def test_an_auditor_reads_but_does_not_write(gw, principals):
    _, aud = principals["auditor"]
    assert call(gw, "GET", "/admin/changes", aud).status_code == 200
    assert call(gw, "GET", "/admin/identities/inventory", aud).status_code == 200
    assert call(gw, "POST", "/admin/identities", aud, {"name": "x", "owner": "o"}).status_code == 403


def test_removing_the_last_control_role_kills_the_control_key(gw):
    target, key = make(gw, ["auditor"])
    assert call(gw, "GET", "/admin/changes", key).status_code == 200
    r = gw.admin("PUT", f"/admin/identities/{target['id']}/roles", json={"roles": ["invoker"]})
    assert r.status_code == 200
    assert call(gw, "GET", "/admin/changes", key).status_code == 401


def test_a_data_key_cannot_go_to_an_identity_without_invoker(gw, principals):
    aud_ident, _ = principals["auditor"]
    r = gw.admin("POST", f"/admin/identities/{aud_ident['id']}/keys", json={"plane": "data"})
    assert r.status_code == 409
