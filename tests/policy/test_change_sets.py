"""Policy as versioned change sets: propose from a YAML file, read the diff and dry run, approve by a
second operator, activate; self-approval refused; a stale change set refused; rollback restores a
byte-identical document; limits changed through the API survive a restart. SQLite and Postgres."""

from __future__ import annotations

import asyncio
import json

import pytest
import yaml

from helpers import POLICY_HEADER, as_, chat, cli, config, operator, targets
from store.pg_databases import drop_pg_database, fresh_pg_database
from support import start_gateway

IDENTS = [{"name": "app", "owner": "o@example.com", "models": ["*"]}]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/sluice.db"
        return
    url = asyncio.run(fresh_pg_database())
    yield url
    asyncio.run(drop_pg_database(url))


def gateway(sim, tmp_path, url: str, **extra):
    cfg = config(sim, url, policy={"prod": ["routing"]}, **extra)
    return start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)


def exported(g, version: str = "active") -> dict:
    r = g.admin("GET", f"/admin/policy/versions/{version}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/yaml"), r.text
    return yaml.safe_load(r.text)


def test_propose_from_a_file_dry_run_approve_by_a_second_operator_and_activate(sim, tmp_path, store_url):
    g = gateway(sim, tmp_path, store_url)
    try:
        key = g.keys["app"]
        second = operator(g, "second")
        first = chat(g, key)
        v1 = first.headers[POLICY_HEADER]
        assert v1.startswith("1-") and len(v1) == 2 + 12
        assert targets(g, key, 5) == {"chat@v1": 5}
        # GitOps: export, edit, propose the routing section back
        doc = exported(g)
        assert set(doc) == {"routing", "limits", "switches", "guardrails", "tools", "mcp", "cache"}
        doc["routing"]["routes"][0]["targets"] = [{"target": "chat@v2", "weight": 100}]
        path = tmp_path / "routing.yaml"
        path.write_text(yaml.safe_dump({"routing": doc["routing"]}))
        done = cli(g, "policy", "propose", str(path), "--reason", "move chat to v2", "-o", "json")
        assert done.returncode == 0, done.stderr
        cs = json.loads(done.stdout)
        assert cs["status"] == "pending" and cs["needs_approval"] and cs["base"] == 1
        assert "-    - target: chat@v1\n+    - target: chat@v2\n" in cs["diff"]["routing"]
        dry = cs["dry_run"]
        assert dry["routes"] == ["chat"] and "chat" in dry["models"] and dry["identities"] == ["app"]
        moved = {t["model"]: t for t in dry["traffic"]}
        assert moved["chat"]["recent_requests"] >= 6
        assert moved["chat"]["now"]["targets"] == {"chat@v1": 100}
        assert moved["chat"]["under_change"]["targets"] == {"chat@v2": 100}
        # pending: nothing moved yet
        assert targets(g, key, 3) == {"chat@v1": 3}
        # the proposer cannot approve its own prod change
        own = g.admin("POST", f"/admin/policy/changes/{cs['id']}/approve", json={"reason": "lgtm"})
        assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
        # approve and reject carry a reason
        assert as_(g, second, "POST", f"/admin/policy/changes/{cs['id']}/approve", {}).status_code == 400
        done = cli(g, "policy", "approve", cs["id"], "--reason", "reviewed the dry run", key=second)
        assert done.returncode == 0, done.stderr
        # the very next request runs under version 2
        r = chat(g, key)
        assert r.status_code == 200 and r.headers[POLICY_HEADER].startswith("2-")
        assert targets(g, key, 5) == {"chat@v2": 5}
        versions = g.admin("GET", "/admin/policy/versions").json()
        assert versions["active"] == 2
        top = versions["data"][0]
        assert top["parent"] == 1 and top["reason"] == "move chat to v2" and len(top["hash"]) == 64
        actions = [c["action"] for c in g.admin("GET", "/admin/changes?limit=5").json()["data"]]
        assert actions[:2] == ["policy.approve", "policy.propose"]
        last = g.admin("GET", "/admin/changes?limit=1").json()["data"][0]
        assert last["detail"]["reason"] == "reviewed the dry run" and last["detail"]["policy_version"] == 2
        # a decided change set cannot be approved again
        again = as_(g, second, "POST", f"/admin/policy/changes/{cs['id']}/approve", {"reason": "again"})
        assert again.status_code == 409
    finally:
        g.stop()


def test_a_stale_change_set_is_refused(sim, tmp_path, store_url):
    g = gateway(sim, tmp_path, store_url)
    try:
        second = operator(g, "second")
        doc = exported(g)
        proposals = []
        for target in ("chat@v2", "chat@v1"):
            routing = json.loads(json.dumps(doc["routing"]))
            routing["routes"][0]["targets"] = [{"target": target, "weight": 1}]
            r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": routing}, "reason": target})
            assert r.status_code == 202, r.text
            proposals.append(r.json()["id"])
        ok = as_(g, second, "POST", f"/admin/policy/changes/{proposals[0]}/approve", {"reason": "first"})
        assert ok.status_code == 200, ok.text
        stale = as_(g, second, "POST", f"/admin/policy/changes/{proposals[1]}/approve", {"reason": "second"})
        assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_policy"
        assert g.admin("GET", f"/admin/policy/changes/{proposals[1]}").json()["stale"] is True
        # proposing against a base that is no longer active is refused too
        r = g.admin("POST", "/admin/policy/changes", json={"sections": {"limits": {"rules": []}}, "reason": "x", "base": 1})
        assert r.status_code == 409 and r.json()["error"]["code"] == "stale_policy"
        assert g.admin("GET", "/admin/policy").json()["version"] == 2
        # and a rejected one stays rejected, with its reason
        rej = as_(g, second, "POST", f"/admin/policy/changes/{proposals[1]}/reject", {"reason": "superseded"})
        assert rej.status_code == 200 and rej.json()["status"] == "rejected"
        assert rej.json()["decision_reason"] == "superseded"
    finally:
        g.stop()


def test_rollback_restores_a_byte_identical_policy_as_a_new_version(sim, tmp_path, store_url):
    g = gateway(sim, tmp_path, store_url)
    try:
        key = g.keys["app"]
        before = g.admin("GET", "/admin/policy/versions/1?format=json").json()
        # a dev change (limits) applies at once; then a weight shift through the old endpoint waits for approval
        r = g.admin("PUT", "/admin/limits", json={"rules": [{"name": "rpm", "requests_per_minute": 1000}]})
        assert r.status_code == 200, r.text
        assert g.admin("GET", "/admin/policy").json()["version"] == 2
        done = cli(g, "policy", "rollback", "1", "--reason", "back to the seed")
        assert done.returncode == 0, done.stderr
        after = g.admin("GET", "/admin/policy/versions/3?format=json").json()
        assert after["kind"] == "rollback" and after["parent"] == 2
        assert after["hash"] == before["hash"] and after["document"] == before["document"]
        y1 = g.admin("GET", "/admin/policy/versions/1").text.split("\n", 2)[2]
        y3 = g.admin("GET", "/admin/policy/versions/3").text.split("\n", 2)[2]
        assert y1 == y3
        exported_cli = cli(g, "policy", "export", "3")
        assert exported_cli.returncode == 0 and exported_cli.stdout.split("\n", 2)[2] == y1
        r = chat(g, key)
        assert r.headers[POLICY_HEADER] == f"3-{before['hash'][:12]}"
        assert "x-ratelimit-limit-requests" not in r.headers  # the limit of version 2 is gone
        assert g.admin("GET", "/admin/limits").json()["rules"] == []
        last = g.admin("GET", "/admin/changes?limit=1").json()["data"][0]
        assert last["action"] == "policy.rollback" and last["detail"]["to"] == 1
        # no version given: the one before the active
        assert cli(g, "policy", "rollback", "--reason", "undo").returncode == 0
        assert g.admin("GET", "/admin/policy/versions/4?format=json").json()["hash"] == \
            g.admin("GET", "/admin/policy/versions/2?format=json").json()["hash"]
    finally:
        g.stop()


def test_a_weight_shift_on_a_prod_route_waits_for_a_second_operator(sim, tmp_path):
    g = gateway(sim, tmp_path, f"sqlite:///{tmp_path}/sluice.db")
    try:
        r = g.admin("PUT", "/admin/routing/routes/chat/weights", json={"targets": [{"target": "chat@v2", "weight": 1}]})
        assert r.status_code == 202 and r.json()["pending"] is True
        assert targets(g, g.keys["app"], 3) == {"chat@v1": 3}
        second = operator(g, "second")
        assert as_(g, second, "POST", f"/admin/policy/changes/{r.json()['id']}/approve", {"reason": "ok"}).status_code == 200
        assert targets(g, g.keys["app"], 3) == {"chat@v2": 3}
    finally:
        g.stop()


def test_limits_changed_through_the_api_survive_a_restart(sim, tmp_path, store_url):
    url = store_url
    g = gateway(sim, tmp_path, url)
    try:
        rules = [{"name": "tight", "requests_per_minute": 2}]
        assert g.admin("PUT", "/admin/limits", json={"rules": rules}).status_code == 200
    finally:
        g.stop()
    g = gateway(sim, tmp_path, url)
    try:
        assert [x["name"] for x in g.admin("GET", "/admin/limits").json()["rules"]] == ["tight"]
        codes = [chat(g, g.keys["app"]).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    finally:
        g.stop()


def test_bad_change_sets_are_refused_with_openai_errors(sim, tmp_path):
    g = gateway(sim, tmp_path, f"sqlite:///{tmp_path}/sluice.db")
    try:
        bad = [
            {"sections": {"nope": {}}, "reason": "x"},
            {"sections": {"routing": {"routes": [{"name": "r", "targets": [{"target": "ghost@v9"}]}]}}, "reason": "x"},
            {"sections": {"limits": {"rules": [{"name": "a", "requests_per_minute": 0}]}}, "reason": "x"},
            {"sections": {"limits": {"rules": [{"name": "a", "requests_per_minute": 1},
                                               {"name": "a", "requests_per_minute": 2}]}}, "reason": "x"},
            {"sections": {"switches": {"frozen": False}}, "reason": "x"},  # changes nothing
            {"sections": {}, "reason": "x"},
            {"sections": {"limits": {"rules": []}}, "reason": ""},
        ]
        for body in bad:
            r = g.admin("POST", "/admin/policy/changes", json=body)
            assert r.status_code == 400, (body, r.text)
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert "Traceback" not in r.text
        assert g.admin("GET", "/admin/policy").json()["version"] == 1
        assert g.admin("GET", "/admin/policy/versions/999").status_code == 404
        assert g.admin("GET", "/admin/policy/versions/-1").status_code == 404
    finally:
        g.stop()
