"""Separation of duties: every control-plane endpoint with every role, and the grant rules."""

from __future__ import annotations

import time

import httpx
import pytest

from sluice.admin.api import AdminApi
from sluice.identity.roles import ROLE_SCOPES

CONTROL_ROLES = ["operator", "key-admin", "auditor", "owner"]
PARAMS = {"identity_id": "id-nope", "key_id": "key-nope", "owner": "nobody@example.com", "model": "no-such-model",
          "request_id": "req-nope", "route": "no-such-route", "version": "v-nope"}


def endpoint_table() -> list[tuple[str, str, tuple[str, ...]]]:
    return [(m, p, s) for m, p, s, _ in AdminApi.endpoints(AdminApi.__new__(AdminApi))]


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


def test_the_endpoint_table_is_the_whole_surface(gw):
    table = endpoint_table()
    assert len(table) >= 20
    for method, path, _ in table:
        filled = path.format(**PARAMS)
        assert call(gw, method, filled, None).status_code == 401, (method, path)


def test_every_endpoint_with_every_role(gw, principals):
    wrong = []
    for role, (_, key) in principals.items():
        granted = ROLE_SCOPES[role]
        for method, path, scopes in endpoint_table():
            r = call(gw, method, path.format(**PARAMS), key, {})
            allowed = set(scopes) <= granted
            if allowed and r.status_code in (401, 403):
                wrong.append(f"{role} refused {method} {path}: {r.status_code} {r.text[:120]}")
            if not allowed and (r.status_code != 403 or r.json()["error"]["code"] != "missing_scope"):
                wrong.append(f"{role} not refused {method} {path}: {r.status_code}")
    assert not wrong, "\n".join(wrong)


def test_data_plane_keys_are_refused_by_every_endpoint(gw):
    for method, path, _ in endpoint_table():
        r = call(gw, method, path.format(**PARAMS), gw.keys["app"], {})
        assert r.status_code == 401 and r.json()["error"]["code"] == "wrong_plane", (method, path)


def test_infrastructure_endpoints_are_public_on_the_control_port(gw):
    for path in ("/metrics", "/healthz", "/readyz"):
        assert httpx.get(gw.admin_url + path).status_code == 200


def test_an_operator_changes_routing_but_cannot_issue_keys(gw, principals):
    _, op = principals["operator"]
    app = next(i for i in gw.admin("GET", "/admin/identities").json()["data"] if i["name"] == "app")
    r = call(gw, "POST", f"/admin/identities/{app['id']}/keys", op, {})
    assert r.status_code == 403
    r = call(gw, "PUT", "/admin/routes/sim-small", op, {"upstream": "sim"})
    assert r.status_code == 200 and r.json()["upstream"] == "sim"


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
