"""Incident switches: each is one command and one recorded change, and the very next request sees it."""

from __future__ import annotations

import json

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


def switch(g, *args: str) -> dict:
    """Run one switch command; it must add exactly one entry to the change log."""
    before = len(changes(g))
    done = cli(g, "switch", *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert len(changes(g)) == before + 1
    return json.loads(done.stdout)


def test_a_killed_model_version_takes_no_next_request_and_its_fallback_does(g):
    key = g.keys["app"]
    assert targets(g, key, 3) == {"chat@v1": 3}
    out = switch(g, "disable-target", "chat@v1", "--fallback", "chat@v2", "--reason", "bad release")
    r = chat(g, key)  # the very next request
    assert r.status_code == 200 and target_of(r) == "chat@v2" and r.headers[POLICY_HEADER] == out["tag"]
    assert changes(g)[0]["action"] == "switch.disable-target" and changes(g)[0]["detail"]["reason"] == "bad release"
    switch(g, "enable-target", "chat@v1", "--reason", "fixed")
    assert target_of(chat(g, key)) == "chat@v1"
    # without a fallback a killed sole target answers 503, with an OpenAI error
    switch(g, "disable-target", "chat@v1", "--reason", "stop it")
    r = chat(g, key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_target" and "retry-after" in r.headers


def test_a_killed_route_answers_503_or_sends_everything_to_its_fallback(g):
    key = g.keys["app"]
    switch(g, "disable-route", "chat", "--reason", "incident 42")
    r = chat(g, key)
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_healthy_target"
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
    switch(g, "limit", "chat", "--rpm", "1", "--reason", "runaway spend")
    r1, r2 = chat(g, key), chat(g, key)
    assert r1.status_code == 200 and r1.headers["x-ratelimit-limit-requests"] == "1"
    assert r2.status_code == 429 and r2.json()["error"]["code"] == "rate_limit_exceeded"
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
