"""Rollback keeps the separation of duties (issue 23 item 12): one operator restores only the active
version's parent, and only when that touches no prod part and leaves the freeze as it is; any other
rollback becomes a change set that a second operator approves (while frozen too). The CLI prints the
diff and says what it restores."""

from __future__ import annotations

import pytest

from helpers import as_, cli, config, operator
from support import start_gateway

IDENTS = [{"name": "app", "owner": "o@example.com", "models": ["*"]}]
TOOLS = [{"name": "wire_money", "risk": "read", "identities": ["app", "intern"]}]


@pytest.fixture()
def g(sim, tmp_path):
    cfg = config(sim, f"sqlite:///{tmp_path}/sluice.db", policy={"prod": ["tools"]}, tools=TOOLS)
    gw = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    yield gw
    gw.stop()


def active(g) -> dict:
    return g.admin("GET", "/admin/policy").json()


def version(g, n: int) -> dict:
    return g.admin("GET", f"/admin/policy/versions/{n}?format=json").json()


def grants(g) -> list[str]:
    return version(g, active(g)["version"])["document"]["tools"][0]["identities"]


def limit(g, rpm: int) -> None:
    r = g.admin("PUT", "/admin/limits", json={"rules": [{"name": "rpm", "requests_per_minute": rpm}]})
    assert r.status_code == 200, r.text


def test_one_operator_restores_only_the_parent_and_a_second_approves_any_earlier_version(g):
    limit(g, 1000)
    limit(g, 2000)
    assert active(g)["version"] == 3
    done = cli(g, "policy", "rollback", "1", "--reason", "back to the seed")
    assert done.returncode == 0, done.stderr
    assert "-    requests_per_minute: 2000\n" in done.stdout  # the diff of the limits section it would restore
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith("rollback to version 1 over version 3 (limits) waits for a second operator"), line
    assert "version 1 is not the parent of the active version 3" in line
    assert active(g)["version"] == 3
    r = g.admin("POST", "/admin/policy/rollback", json={"version": 1, "reason": "back to the seed"})
    assert r.status_code == 202, r.text
    cs = r.json()
    assert cs["pending"] and cs["needs_approval"] and cs["kind"] == "rollback" and cs["restores"] == 1
    own = g.admin("POST", f"/admin/policy/changes/{cs['id']}/approve", json={"reason": "mine"})
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    second = operator(g, "second")
    ok = as_(g, second, "POST", f"/admin/policy/changes/{cs['id']}/approve", {"reason": "reviewed"})
    assert ok.status_code == 200, ok.text
    v4 = version(g, 4)
    assert v4["kind"] == "rollback" and v4["parent"] == 3 and v4["document"] == version(g, 1)["document"]
    last = g.admin("GET", "/admin/changes?limit=1").json()["data"][0]
    assert last["action"] == "policy.approve" and last["detail"]["to"] == 1 and last["actor"] != "config-admin-0"
    # the parent, dev sections only: one operator, at once
    done = cli(g, "policy", "rollback", "--reason", "undo")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "restored version 3 over version 4 (limits) as version 5"
    assert version(g, 5)["document"] == version(g, 3)["document"]


def test_a_rollback_that_would_undo_a_reviewed_prod_change_waits_for_a_second_operator(g):
    tools = [dict(TOOLS[0], identities=["app"])]
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"tools": tools}, "reason": "the intern loses wire_money"})
    assert r.status_code == 202, r.text
    second = operator(g, "second")
    assert as_(g, second, "POST", f"/admin/policy/changes/{r.json()['id']}/approve", {"reason": "ok"}).status_code == 200
    assert grants(g) == ["app"] and active(g)["version"] == 2
    # version 1 is the parent, but restoring it gives the grant back: a prod part
    preview = cli(g, "policy", "rollback", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert "+  - intern\n" in preview.stdout
    assert preview.stdout.strip().splitlines()[-1] == ("would restore version 1 over version 2 (tools): waits for a "
                                                       "second operator: it touches prod parts: tools")
    r = g.admin("POST", "/admin/policy/rollback", json={"reason": "undo"})
    assert r.status_code == 202 and r.json()["prod"] == ["tools"], r.text
    assert grants(g) == ["app"] and active(g)["version"] == 2
    rejected = as_(g, second, "POST", f"/admin/policy/changes/{r.json()['id']}/reject", {"reason": "no"})
    assert rejected.status_code == 200, rejected.text
    assert grants(g) == ["app"]


def test_a_rollback_neither_lifts_nor_restores_a_freeze_on_one_operators_say(g):
    second = operator(g, "second")
    assert cli(g, "switch", "freeze", "--reason", "incident").returncode == 0
    # the parent (version 1) is unfrozen: restoring it would lift the freeze
    r = g.admin("POST", "/admin/policy/rollback", json={"reason": "back"})
    assert r.status_code == 202 and "it would lift the freeze" in r.json()["why"], r.text
    assert active(g)["frozen"] is True
    frozen = g.admin("PUT", "/admin/limits", json={"rules": []})
    assert frozen.status_code == 409 and frozen.json()["error"]["code"] == "control_plane_frozen"
    # a second operator approves it while frozen: that is what lifts it
    ok = as_(g, second, "POST", f"/admin/policy/changes/{r.json()['id']}/approve", {"reason": "incident over"})
    assert ok.status_code == 200, ok.text
    assert active(g)["frozen"] is False and version(g, active(g)["version"])["kind"] == "rollback"
    # after freeze and unfreeze, a bare rollback would freeze again: it waits, and says so
    assert cli(g, "switch", "freeze", "--reason", "again").returncode == 0
    assert cli(g, "switch", "unfreeze", "--reason", "over").returncode == 0
    at = active(g)["version"]
    done = cli(g, "policy", "rollback")
    assert done.returncode == 0, done.stderr
    assert "-  frozen: false\n+  frozen: true\n" in done.stdout
    assert "waits for a second operator (it would freeze the control plane)" in done.stdout
    assert active(g)["frozen"] is False and active(g)["version"] == at
    # while frozen, one operator still undoes the last switch: the parent keeps the freeze
    assert cli(g, "switch", "freeze", "--reason", "third").returncode == 0
    assert cli(g, "switch", "disable-target", "chat@v1", "--fallback", "chat@v2", "--reason", "bad").returncode == 0
    done = cli(g, "policy", "rollback", "--reason", "the kill was a mistake")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith("restored version")
    assert active(g)["frozen"] is True and active(g)["switches"]["disabled_targets"] == {}
