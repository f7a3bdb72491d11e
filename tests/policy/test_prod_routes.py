"""A route tagged ``route:NAME`` in ``policy.prod`` is protected whole: a change that moves where its
requests go (its spec, a registry version it targets or falls back to, a route ahead of it that could
take its requests) needs a second operator, whichever endpoint makes it (issue 23 item 10)."""

from __future__ import annotations

import pytest

from helpers import as_, operator
from support import Sim, start_gateway

PROD = ["route:pay", "route:ledger"]
LEDGER = [{"version": "v1", "upstream": "pay-a", "upstream_model": "sim-small", "approved": True},
          {"version": "v2", "upstream": "pay-a", "upstream_model": "sim-small", "approved": True}]
ROUTES = [{"name": "ledger", "match": {"models": ["ledger"]}, "targets": [{"target": "ledger@v1"}],
           "fallbacks": ["ledger@v2"]},
          # ahead of `pay` (routes come before `models:`), but only for team canary, which falls back to ledger
          {"name": "pay-canary", "match": {"models": ["pay"], "teams": ["canary"]}, "targets": [{"target": "pay@default"}],
           "fallbacks": ["ledger@v1"]}]


@pytest.fixture()
def two(sim, tmp_path):
    """A gateway whose `pay-a` upstream is the shared sim and `pay-b` a sim of its own (to see where requests land)."""
    other = Sim(tmp_path)
    g = start_gateway(
        tmp_path, upstreams=[{"name": "pay-a", "base_url": sim.url + "/v1"}, {"name": "pay-b", "base_url": other.url + "/v1"}],
        models=[{"name": "pay", "upstream": "pay-a", "upstream_model": "sim-small"},
                {"name": "free", "upstream": "pay-a", "upstream_model": "sim-small"}],
        identities=[{"name": "app", "owner": "o@example.com", "models": ["*"]}],
        extra={"registry": [{"name": "ledger", "versions": LEDGER}], "routes": ROUTES, "policy": {"prod": PROD}})
    yield g, other
    g.stop()
    other.stop()


def _on_b(g, other: Sim, model: str) -> int:
    """Requests for ``model`` that reached `pay-b` (sent five)."""
    before = other.stats()["chat_requests"]
    for _ in range(5):
        r = g.post("/v1/chat/completions", g.keys["app"],
                   json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert r.status_code == 200, r.text
    return other.stats()["chat_requests"] - before


def _registry(g) -> dict:
    doc = g.admin("GET", "/admin/policy/versions/active?format=json").json()["document"]["routing"]
    return {f"{m['name']}@{v['version']}": v for m in doc["registry"] for v in m["versions"]}


def _with_version(g, target: str, **changes: object) -> dict:
    """The active routing section with one registry version changed (what a change set would propose)."""
    routing = g.admin("GET", "/admin/policy/versions/active?format=json").json()["document"]["routing"]
    model, version = target.split("@")
    for m in routing["registry"]:
        for v in m["versions"]:
            if m["name"] == model and v["version"] == version:
                v.update(changes)
    return routing


def test_a_change_to_a_version_a_prod_route_targets_waits_for_a_second_operator_on_every_endpoint(two):
    g, other = two
    version = g.admin("GET", "/admin/policy").json()["version"]
    pending = []
    # the retarget endpoint: the route's spec is untouched, the version it targets moves upstream
    r = g.admin("PUT", "/admin/routes/pay", json={"upstream": "pay-b"})
    assert r.status_code == 202 and r.json()["pending"] and r.json()["needs_approval"], r.text
    pending.append(r.json()["id"])
    # the same move as a change set of the registry alone
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": _with_version(g, "pay@default", upstream="pay-b")},
                                                       "reason": "move pay"})
    assert r.status_code == 202 and r.json()["needs_approval"], r.text
    assert r.json()["dry_run"]["routes"] == ["pay", "pay-canary"]
    pending.append(r.json()["id"])
    # a fallback version is part of the route too: unapproving it, or moving it
    r = g.admin("PUT", "/admin/registry/ledger/versions/v2/approval", json={"approved": False})
    assert r.status_code == 202 and r.json()["needs_approval"], r.text
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": _with_version(g, "ledger@v2", upstream="pay-b")},
                                                       "reason": "move the fallback"})
    assert r.status_code == 202 and r.json()["needs_approval"], r.text
    # a route put ahead of `pay` that takes its requests moves them as surely as a new target
    routing = g.admin("GET", "/admin/policy/versions/active?format=json").json()["document"]["routing"]
    routing["routes"].insert(0, {"name": "shadow", "match": {"models": ["pay"]}, "targets": [{"target": "free@default"}]})
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": routing}, "reason": "shadow pay"})
    assert r.status_code == 202 and r.json()["needs_approval"], r.text
    routing["routes"].pop(0)  # and so does widening a route that was ahead of it all along
    canary = next(x for x in routing["routes"] if x["name"] == "pay-canary")
    canary["match"]["teams"] = []
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": routing}, "reason": "canary for all"})
    assert r.status_code == 202 and r.json()["needs_approval"] and r.json()["dry_run"]["routes"] == ["pay", "pay-canary"], r.text
    # nothing moved on one operator's say
    assert g.admin("GET", "/admin/policy").json()["version"] == version
    assert _registry(g)["pay@default"]["upstream"] == "pay-a"
    assert _on_b(g, other, "pay") == 0
    # a version no prod route uses is dev: applied at once
    r = g.admin("PUT", "/admin/routes/free", json={"upstream": "pay-b"})
    assert r.status_code == 200, r.text
    assert _on_b(g, other, "free") == 5
    # the proposer cannot approve the retarget; a second operator can, and pay's next request moves
    own = g.admin("POST", f"/admin/policy/changes/{pending[0]}/approve", json={"reason": "mine"})
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    second = operator(g, "second")
    stale = as_(g, second, "POST", f"/admin/policy/changes/{pending[0]}/approve", {"reason": "reviewed"})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_policy"  # `free` moved meanwhile
    r = g.admin("PUT", "/admin/routes/pay", json={"upstream": "pay-b"})
    assert r.status_code == 202, r.text
    ok = as_(g, second, "POST", f"/admin/policy/changes/{r.json()['id']}/approve", {"reason": "reviewed"})
    assert ok.status_code == 200, ok.text
    assert _on_b(g, other, "pay") == 5
