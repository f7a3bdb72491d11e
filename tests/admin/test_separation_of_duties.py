"""Separation of duties without side doors: an actor may act on an identity (change it, move
its team, disable, enable, offboard, issue/rotate/revoke its keys) only if it holds every
control role that identity holds. A key-admin manages invokers, not owners, auditors or
operators; the break-glass admin holds every role."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest

TARGET_ROLES = ["owner", "auditor", "operator"]


def _unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns() % 10**12}"


def _call(gw, method: str, path: str, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, gw.admin_url + path, headers={"Authorization": f"Bearer {key}"},
                         json=body if body is not None else {}, timeout=10)


def _target(gw, role: str) -> dict:
    """An identity holding ``role`` with one live key of its plane, owned by a unique owner."""
    owner = _unique("owner") + "@example.com"
    r = gw.admin("POST", "/admin/identities", json={"name": _unique(role), "owner": owner, "roles": [role],
                                                   "models": ["sim-small"]})
    assert r.status_code == 201, r.text
    ident = r.json()
    key = gw.admin("POST", f"/admin/identities/{ident['id']}/keys",
                   json={"plane": "data" if role == "invoker" else "control"})
    assert key.status_code == 201, key.text
    return {**ident, "key_id": key.json()["id"], "key": key.json()["key"]}


@pytest.fixture(scope="module")
def team(gw) -> str:
    name = _unique("sod-team")
    assert gw.admin("POST", "/admin/teams", json={"name": name, "owner": "x@example.com"}).status_code == 201
    return name


@pytest.fixture(scope="module")
def key_admin(gw) -> str:
    ident = gw.admin("POST", "/admin/identities", json={"name": _unique("ka"), "owner": "sec@example.com",
                                                       "roles": ["key-admin"]}).json()
    return gw.admin("POST", f"/admin/identities/{ident['id']}/keys", json={"plane": "control"}).json()["key"]


def _actions(team: str) -> dict[str, Callable]:
    """Each action on a target identity: (gw, actor key, target) -> response."""
    return {
        "change models": lambda gw, k, t: _call(gw, "PATCH", f"/admin/identities/{t['id']}", k, {"models": []}),
        "change owner": lambda gw, k, t: _call(gw, "PATCH", f"/admin/identities/{t['id']}", k, {"owner": "new@example.com"}),
        "move team": lambda gw, k, t: _call(gw, "PATCH", f"/admin/identities/{t['id']}", k, {"team": team}),
        "disable": lambda gw, k, t: _call(gw, "DELETE", f"/admin/identities/{t['id']}", k),
        "enable": lambda gw, k, t: (gw.admin("DELETE", f"/admin/identities/{t['id']}"),
                                    _call(gw, "POST", f"/admin/identities/{t['id']}/enable", k))[1],
        "offboard": lambda gw, k, t: _call(gw, "POST", f"/admin/owners/{t['owner']}/offboard", k),
        "issue key": lambda gw, k, t: _call(gw, "POST", f"/admin/identities/{t['id']}/keys", k,
                                            {"plane": "data" if "invoker" in t["roles"] else "control"}),
        "rotate key": lambda gw, k, t: _call(gw, "POST", f"/admin/keys/{t['key_id']}/rotate", k),
        "revoke key": lambda gw, k, t: _call(gw, "POST", f"/admin/keys/{t['key_id']}/revoke", k),
    }


ACTIONS = list(_actions("").keys())


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", TARGET_ROLES)
def test_a_key_admin_cannot_act_on_an_identity_holding_a_role_it_lacks(gw, key_admin, team, role, action):
    target = _target(gw, role)
    r = _actions(team)[action](gw, key_admin, target)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "grant_beyond_own"
    after = gw.admin("GET", f"/admin/identities/{target['id']}").json()
    expect_disabled = action == "enable"  # the break-glass admin disabled it first; the refusal changed nothing
    assert (after["disabled_at"] is not None) == expect_disabled and after["owner"] == target["owner"]
    assert after["models"] == target["models"] and after["team"] == target["team"]
    keys = gw.admin("GET", f"/admin/identities/{target['id']}/keys").json()["data"]
    assert len(keys) == 1 and (keys[0]["revoked_at"] is None) != expect_disabled


def _use(gw, target: dict, key: str) -> int:
    """The status of one use of ``key`` on its plane: a chat for an invoker, ``whoami`` for a control role."""
    if "invoker" in target["roles"]:
        return gw.post("/v1/chat/completions", key, json={"model": "sim-small", "max_tokens": 1,
                                                          "messages": [{"role": "user", "content": "hi"}]}).status_code
    return httpx.get(gw.admin_url + "/admin/whoami", headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def _took_effect(gw, team: str, action: str, target: dict, r: httpx.Response) -> None:
    """The action happened: the identity reads as changed and its keys work, or are refused, as it says."""
    after = gw.admin("GET", f"/admin/identities/{target['id']}").json()
    keys = {k["id"]: k for k in gw.admin("GET", f"/admin/identities/{target['id']}/keys").json()["data"]}
    invoker = "invoker" in target["roles"]
    if action == "change models":
        assert after["models"] == []
        assert _use(gw, target, target["key"]) == (404 if invoker else 200)  # no model left to see
    elif action == "change owner":
        assert after["owner"] == "new@example.com"
    elif action == "move team":
        assert after["team"] == team
    elif action in ("disable", "offboard"):
        assert after["disabled_at"] is not None and keys[target["key_id"]]["revoked_at"] is not None
        assert _use(gw, target, target["key"]) == 401
    elif action == "enable":
        assert after["disabled_at"] is None and keys[target["key_id"]]["revoked_at"] is None
        assert _use(gw, target, target["key"]) == 200
    elif action == "issue key":
        assert r.json()["id"] in keys and len(keys) == 2
        assert _use(gw, target, r.json()["key"]) == 200 and _use(gw, target, target["key"]) == 200
    elif action == "rotate key":
        assert keys[target["key_id"]]["revoked_at"] is not None and keys[r.json()["id"]]["revoked_at"] is None
        assert _use(gw, target, r.json()["key"]) == 200 and _use(gw, target, target["key"]) == 401
    elif action == "revoke key":
        assert keys[target["key_id"]]["revoked_at"] is not None
        assert _use(gw, target, target["key"]) == 401
    else:  # pragma: no cover - a new action needs its effect here
        pytest.fail(f"no check for {action!r}")


@pytest.mark.parametrize("action", ACTIONS)
def test_a_key_admin_may_act_on_an_invoker(gw, key_admin, team, action):
    target = _target(gw, "invoker")
    assert _use(gw, target, target["key"]) == 200
    r = _actions(team)[action](gw, key_admin, target)
    assert r.status_code in (200, 201), r.text
    _took_effect(gw, team, action, target, r)


@pytest.mark.parametrize("action", ACTIONS)
def test_the_break_glass_admin_may_act_on_an_owner(gw, team, action):
    target = _target(gw, "owner")
    assert _use(gw, target, target["key"]) == 200
    r = _actions(team)[action](gw, gw.admin_key, target)
    assert r.status_code in (200, 201), r.text
    _took_effect(gw, team, action, target, r)
