"""Incident switches: each is one command and one recorded change, and the very next request sees it."""

from __future__ import annotations

import calendar
import json
import re
import time

import pytest

from helpers import POLICY_HEADER, as_, chat, cli, config, operator, target_of, targets
from support import start_gateway

IDENTS = [{"name": "app", "owner": "o@example.com", "models": ["*"]},
          {"name": "leaky", "owner": "leaky@example.com", "models": ["*"]},
          {"name": "leaky-2", "owner": "leaky@example.com", "models": ["*"]}]


@pytest.fixture()
def g(sim, tmp_path):
    cfg = config(sim, f"sqlite:///{tmp_path}/sluice.db", policy={"prod": ["routing", "limits"]})
    gw = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    yield gw
    gw.stop()


def changes(g) -> list[dict]:
    return g.admin("GET", "/admin/changes?limit=1000").json()["data"]


def switch(g, *args: str) -> dict | str:
    """Run one switch command; it must add exactly one entry to the change log. Its JSON, or its text."""
    before = len(changes(g))
    done = cli(g, "switch", *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert len(changes(g)) == before + 1
    try:
        return json.loads(done.stdout)
    except ValueError:
        return done.stdout


def test_a_killed_model_version_takes_no_next_request_and_its_fallback_does(g):
    key = g.keys["app"]
    assert targets(g, key, 3) == {"chat@v1": 3}
    out = switch(g, "disable-target", "chat@v1", "--fallback", "chat@v2", "--reason", "bad release")
    r = chat(g, key)  # the very next request
    assert r.status_code == 200 and target_of(r) == "chat@v2" and r.headers[POLICY_HEADER] == out["tag"]
    assert changes(g)[0]["action"] == "switch.disable-target" and changes(g)[0]["detail"]["reason"] == "bad release"
    switch(g, "enable-target", "chat@v1", "--reason", "fixed")
    assert target_of(chat(g, key)) == "chat@v1"
    # without a fallback a killed sole target answers 503, with an OpenAI error of its own (not an outage's)
    switch(g, "disable-target", "chat@v1", "--reason", "stop it")
    r = chat(g, key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "disabled_by_operator" and "retry-after" in r.headers
    assert "switched off by an operator" in r.json()["error"]["message"]


def test_a_killed_route_answers_503_or_sends_everything_to_its_fallback(g):
    key = g.keys["app"]
    switch(g, "disable-route", "chat", "--reason", "incident 42")
    r = chat(g, key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "disabled_by_operator"
    switch(g, "enable-route", "chat", "--reason", "over")
    assert chat(g, key).status_code == 200
    switch(g, "disable-route", "chat", "--fallback", "chat@v2", "--reason", "drain v1")
    assert targets(g, key, 3) == {"chat@v2": 3}
    assert g.admin("POST", "/admin/switches/routes/chat/disable",
                   json={"reason": "x", "fallback": "ghost@v0"}).status_code == 404


def test_revoking_every_credential_of_an_identity_or_an_owner_refuses_the_next_request(g):
    ids = {i["name"]: i["id"] for i in g.admin("GET", "/admin/identities").json()["data"]}
    assert chat(g, g.keys["app"]).status_code == 200
    # straight through the API, so nothing but the switch itself stands between it and the next request
    out = g.admin("POST", "/admin/switches/revoke", json={"identity_id": ids["app"], "reason": "key in a public repo"})
    r = chat(g, g.keys["app"])
    assert r.status_code == 401 and g.keys["app"] not in r.text
    assert out.status_code == 200 and len(out.json()["revoked"]) == 1
    assert changes(g)[0]["action"] == "switch.revoke"
    # the identity stays: a new key works at once
    new = g.admin("POST", f"/admin/identities/{ids['app']}/keys", json={}).json()["key"]
    assert chat(g, new).status_code == 200
    assert [chat(g, g.keys[n]).status_code for n in ("leaky", "leaky-2")] == [200, 200]
    switch(g, "revoke", "--owner", "leaky@example.com", "--reason", "laptop stolen")
    assert [chat(g, g.keys[n]).status_code for n in ("leaky", "leaky-2")] == [401, 401]
    assert chat(g, new).status_code == 200  # someone else's credentials are untouched


def test_a_stricter_limit_on_a_model_holds_from_the_next_request(g):
    key = g.keys["app"]
    assert [chat(g, key).status_code for _ in range(3)] == [200] * 3
    before = len(changes(g))
    out = cli(g, "switch", "limit", "chat", "--rpm", "1", "--reason", "runaway spend").stdout  # as a person reads it
    assert len(changes(g)) == before + 1
    assert out.startswith("chat is limited to 1 requests/min, for the model as a whole (rule switch-chat"), out
    r1, r2 = chat(g, key), chat(g, key)
    assert r1.status_code == 200 and r1.headers["x-ratelimit-limit-requests"] == "1"
    assert r2.status_code == 429 and r2.json()["error"]["code"] == "rate_limit_exceeded"
    # the bucket has refilled a sliver since r1: what remains reads as whole requests, never 0.0024
    assert re.search(r"limit 1, remaining 0, this request needs 1\.", r2.json()["error"]["message"]), r2.text
    assert chat(g, g.keys["leaky"]).status_code == 429  # the model as a whole, every caller
    switch(g, "unlimit", "chat")
    assert chat(g, key).status_code == 200


def test_a_frozen_control_plane_takes_only_switches_and_rollback(g):
    second = operator(g, "second")  # made before the freeze: adding an identity is a write it refuses
    waiting = g.admin("PUT", "/admin/limits", json={"rules": [{"name": "x", "requests_per_minute": 5}]})
    assert waiting.status_code == 202, waiting.text
    version = g.admin("GET", "/admin/policy").json()["version"]
    switch(g, "freeze", "--reason", "incident: nobody changes anything")
    for verdict in ("approve", "reject"):  # deciding a change set other than a rollback's is a write it refuses
        r = as_(g, second, "POST", f"/admin/policy/changes/{waiting.json()['id']}/{verdict}", {"reason": "now"})
        assert r.status_code == 409 and r.json()["error"]["code"] == "control_plane_frozen", r.text
    for method, path, body in [("PUT", "/admin/limits", {"rules": []}),
                               ("POST", "/admin/identities", {"name": "x", "owner": "x@example.com"}),
                               ("PUT", "/admin/routing/routes/chat/weights", {"targets": [{"target": "chat@v2", "weight": 1}]}),
                               ("POST", "/admin/policy/changes", {"sections": {"limits": {"rules": []}}, "reason": "x"})]:
        r = g.admin(method, path, json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "control_plane_frozen", (path, r.text)
    assert g.admin("GET", "/admin/identities").status_code == 200  # reads still work
    switch(g, "disable-target", "chat@v1", "--fallback", "chat@v2", "--reason", "still possible")
    assert target_of(chat(g, g.keys["app"])) == "chat@v2"
    # rolling back to before the freeze also lifts it: a second operator approves that, frozen as it is
    done = cli(g, "policy", "rollback", str(version), "--reason", "back before the freeze")
    assert done.returncode == 0, done.stderr
    assert "waits for a second operator" in done.stdout and g.admin("GET", "/admin/policy").json()["frozen"] is True
    pending = g.admin("GET", "/admin/policy/changes").json()["data"][0]
    assert pending["kind"] == "rollback" and pending["restores"] == version
    r = as_(g, second, "POST", f"/admin/policy/changes/{pending['id']}/approve", {"reason": "over"})
    assert r.status_code == 200, r.text
    assert target_of(chat(g, g.keys["app"])) == "chat@v1"
    assert g.admin("GET", "/admin/policy").json()["frozen"] is False
    switch(g, "freeze", "--reason", "again")
    switch(g, "unfreeze", "--reason", "over")
    assert g.admin("PUT", "/admin/limits", json={"rules": []}).status_code in (200, 202)


def test_switch_list_and_policy_show_name_every_switch_in_force_with_who_set_it_and_when(g):
    listed = cli(g, "switch", "list")
    assert listed.returncode == 0 and listed.stdout.strip() == "no switch in force", listed.stdout
    second = operator(g, "second")
    start = time.time()
    switch(g, "disable-target", "chat@v1", "--fallback", "chat@v2", "--reason", "bad release")
    switch(g, "limit", "chat", "--rpm", "60", "--per-identity", "--reason", "runaway spend")
    done = cli(g, "switch", "disable-route", "chat", "--reason", "incident 42", key=second)
    assert done.returncode == 0, done.stderr
    switch(g, "freeze", "--reason", "hands off")
    end = time.time()
    by = {i["name"]: i for i in g.admin("GET", "/admin/identities").json()["data"]}
    second_name = next(n for n in by if n.startswith("second-"))
    api = g.admin("GET", "/admin/switches").json()["data"]
    assert {(s["kind"], s["name"], s["set_by"], s["reason"]) for s in api} == {
        ("target", "chat@v1", "config-admin-0", "bad release"), ("limit", "chat", "config-admin-0", "runaway spend"),
        ("route", "chat", second_name, "incident 42"), ("freeze", "control-plane", "config-admin-0", "hands off")}
    assert all(start - 1 <= s["set_at"] <= end + 1 for s in api), api
    # a later switch does not move when an earlier one was set
    versions = {s["kind"]: s["version"] for s in api}
    assert versions["target"] < versions["limit"] < versions["route"] < versions["freeze"]
    for args in (("switch", "list"), ("policy", "show")):
        text = cli(g, *args).stdout
        assert "target chat@v1 switched off: its traffic goes to chat@v2" in text, text
        assert "model chat limited to 60 requests/min, per identity" in text
        assert "route chat switched off: it answers 503" in text and "control plane frozen" in text
        assert f"set by {second_name} at " in text and ": incident 42" in text
        stamps = re.findall(r"at (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) \(version", text)
        assert len(stamps) == 4, text
        assert all(int(start) - 1 <= calendar.timegm(time.strptime(t, "%Y-%m-%dT%H:%M:%SZ")) <= end + 1
                   for t in stamps), text
        assert "None" not in text and max(map(len, text.splitlines())) <= 80, text
    assert json.loads(cli(g, "policy", "show", "-o", "json").stdout)["in_force"] == api
    switch(g, "unfreeze", "--reason", "over")
    switch(g, "enable-target", "chat@v1", "--reason", "fixed")
    assert {s["kind"] for s in g.admin("GET", "/admin/switches").json()["data"]} == {"limit", "route"}
