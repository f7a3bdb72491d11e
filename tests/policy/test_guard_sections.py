"""Guardrails and the tool registry as sections of the versioned policy (issue 11 item 1), and decision
records that cite the policy version (item 5): a change set turns guardrails on without a restart,
rollback removes them, and route, tool and limit decisions name the version that made them."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx

from helpers import POLICY_HEADER, as_, config, operator
from support import start_gateway

IDENTS = [{"name": "app", "owner": "o@example.com", "models": ["*"]}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = 'sim:call get_weather {"city": "Oslo"}'
GUARDRAILS = {"rule_sets": [{"name": "short", "match": {"models": ["chat"]}, "input": {"max_messages": 2}}]}
TOOLS = [{"name": "get_weather", "risk": "read", "identities": ["app"]}]


def ask(g, messages: int = 1, **body) -> httpx.Response:
    msgs = [{"role": "user", "content": "hi"}] * (messages - 1) + [{"role": "user", "content": body.pop("text", "hi")}]
    return g.post("/v1/chat/completions", g.keys["app"], json={"model": "chat", "messages": msgs, "max_tokens": 8, **body})


def version_of(r: httpx.Response) -> int:
    return int(r.headers[POLICY_HEADER].split("-")[0])


def poll(fn, deadline: float = 20.0):
    end = time.monotonic() + deadline
    while True:
        got = fn()
        if got or time.monotonic() > end:
            return got
        time.sleep(0.2)


def test_a_change_set_adds_guard_rules_and_a_tool_then_rollback_removes_them(sim, tmp_path):
    cfg = config(sim, f"sqlite:///{tmp_path}/sluice.db", policy={"prod": ["guardrails", "tools"]})
    g = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    try:
        seed = g.admin("GET", "/admin/policy/versions/1?format=json").json()
        assert set(seed["document"]) >= {"guardrails", "tools"}  # the file seeded them (empty)
        # no guard rules in version 1: three messages and an unregistered tool pass
        assert ask(g, 3).status_code == 200
        assert ask(g, tools=[TOOL]).status_code == 200
        r = g.admin("POST", "/admin/policy/changes", json={"sections": {"guardrails": GUARDRAILS, "tools": TOOLS},
                                                           "reason": "guard chat"})
        assert r.status_code == 202 and r.json()["status"] == "pending", r.text
        cs = r.json()["id"]
        d = g.admin("GET", f"/admin/policy/changes/{cs}").json()["diff"]
        assert "max_messages: 2" in d["guardrails"] and "get_weather" in d["tools"], d
        assert ask(g, 3).status_code == 200  # pending: nothing changed yet
        second = operator(g, "second")
        ok = as_(g, second, "POST", f"/admin/policy/changes/{cs}/approve", {"reason": "reviewed"})
        assert ok.status_code == 200, ok.text
        # the next request meets the new input rule and the new registry
        refused = ask(g, 3)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages", refused.text
        assert version_of(refused) == 2
        other = dict(TOOL, function={"name": "drop_db", "parameters": {"type": "object"}})
        assert ask(g, tools=[other]).status_code == 400
        called = ask(g, tools=[TOOL], text=CALL)
        assert called.status_code == 200, called.text
        assert [c["function"]["name"] for c in called.json()["choices"][0]["message"]["tool_calls"]] == ["get_weather"]
        # the tool decision cites the version whose registry allowed it
        active = g.admin("GET", "/admin/policy").json()
        rid = called.headers["x-request-id"]
        rows = poll(lambda: [x for x in g.admin("GET", "/admin/tool-decisions").json()["data"] if x["request_id"] == rid])
        assert rows and rows[0]["decision"] == "allow", rows
        assert rows[0]["policy_version"] == 2 and rows[0]["policy_hash"] == active["hash"]
        # rollback to version 1 touches the prod sections: a second operator approves it, and the rules
        # are gone on the next request
        back = g.admin("POST", "/admin/policy/rollback", json={"version": 1, "reason": "undo guard"})
        assert back.status_code == 202 and back.json()["prod"] == ["guardrails", "tools"], back.text
        ok = as_(g, second, "POST", f"/admin/policy/changes/{back.json()['id']}/approve", {"reason": "undo"})
        assert ok.status_code == 200, ok.text
        again = ask(g, 3)
        assert again.status_code == 200 and version_of(again) == 3
        assert ask(g, tools=[other]).status_code == 200
    finally:
        g.stop()


def test_route_and_limit_decisions_name_the_policy_version(sim, tmp_path):
    cfg = config(sim, f"sqlite:///{tmp_path}/sluice.db")
    g = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    try:
        r = g.admin("PUT", "/admin/limits", json={"rules": [{"name": "one", "requests_per_minute": 1}]})
        assert r.status_code == 200, r.text
        active = g.admin("GET", "/admin/policy").json()
        assert active["version"] == 2
        first, limited = ask(g), ask(g)
        assert first.status_code == 200 and limited.status_code == 429, limited.text
        for resp in (first, limited):
            assert resp.headers[POLICY_HEADER] == f"2-{active['hash'][:12]}"
            why = g.admin("GET", f"/admin/routes/decisions/{resp.headers['x-request-id']}")
            assert why.status_code == 200, why.text
            assert why.json()["policy"] == {"version": 2, "hash": active["hash"]}
    finally:
        g.stop()


def test_a_version_stored_before_the_guard_sections_takes_them_from_the_file(sim, tmp_path):
    """Upgrade: a stored version without `guardrails`/`tools` keys must not drop the file's guardrails."""
    db = tmp_path / "sluice.db"
    cfg = config(sim, f"sqlite:///{db}")
    g = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    g.stop()
    with sqlite3.connect(db) as conn:  # what an older sluice wrote: no guard sections in the document
        (doc,) = conn.execute("SELECT document FROM policy_versions WHERE id = 1").fetchone()
        old = {k: v for k, v in json.loads(doc).items() if k not in ("guardrails", "tools")}
        conn.execute("UPDATE policy_versions SET document = ? WHERE id = 1", (json.dumps(old, sort_keys=True),))
    cfg = config(sim, f"sqlite:///{db}", guardrails=GUARDRAILS, tools=TOOLS)
    g = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    try:
        refused = ask(g, 3)
        assert refused.status_code == 400 and version_of(refused) == 2, refused.text
        assert g.admin("GET", "/admin/policy/versions/2?format=json").json()["document"]["tools"][0]["name"] == "get_weather"
    finally:
        g.stop()


def test_a_change_set_cannot_name_a_classifier_module_the_config_file_did_not(sim, tmp_path):
    """Compiling a proposal imports its classifier; importing runs a module's code. Only the classifiers
    the config file names may be used, so control-plane access cannot make the gateway import anything."""
    cfg = config(sim, f"sqlite:///{tmp_path}/sluice.db")
    g = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    try:
        rules = {"rule_sets": [{"name": "x", "injection": {"action": "flag", "classifier": "json:loads"}}]}
        r = g.admin("POST", "/admin/policy/changes", json={"sections": {"guardrails": rules}, "reason": "try"})
        assert r.status_code == 400, r.text
        assert "not one the config file names" in r.json()["error"]["message"]
        assert g.admin("GET", "/admin/policy").json()["version"] == 1
    finally:
        g.stop()
