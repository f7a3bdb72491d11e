"""Limits change without a restart: on the control plane by an operator, or by SIGHUP reload."""

from __future__ import annotations

import signal
import time

import httpx
import yaml

from support import start_gateway

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_an_operator_changes_limits_and_the_next_request_obeys(gw):
    op = gw.admin("POST", "/admin/identities", json={"name": f"ops-{time.time_ns() % 10**9}", "owner": "sre@example.com",
                                                     "roles": ["operator"]}).json()
    key = gw.admin("POST", f"/admin/identities/{op['id']}/keys", json={"plane": "control"}).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    rules = [{"name": "tight", "match": {"model": "sim-embed"}, "requests_per_minute": 2}]
    r = httpx.put(gw.admin_url + "/admin/limits", headers=auth, json={"rules": rules})
    assert r.status_code == 200, r.text
    try:
        got = [gw.post("/v1/embeddings", gw.keys["app"], json={"model": "sim-embed", "input": "x"}).status_code
               for _ in range(3)]
        assert got == [200, 200, 429]
        assert httpx.get(gw.admin_url + "/admin/limits", headers=auth).json()["rules"][0]["name"] == "tight"
        change = gw.admin("GET", "/admin/changes?limit=20").json()["data"]
        assert any(c["action"] == "limits.replace" and c["actor"] == op["name"] for c in change)
    finally:
        assert httpx.put(gw.admin_url + "/admin/limits", headers=auth, json={"rules": []}).status_code == 200
    assert gw.post("/v1/embeddings", gw.keys["app"], json={"model": "sim-embed", "input": "x"}).status_code == 200


def test_invalid_limits_are_refused_and_change_nothing(gw):
    for body in ({"rules": [{"name": "x", "requests_per_minute": 0}]},
                 {"rules": [{"name": "x"}, {"name": "x"}]},
                 {"rules": [{"name": "bad name!"}]},
                 {"rules": "none"}):
        r = gw.admin("PUT", "/admin/limits", json=body)
        assert r.status_code == 400, body
    assert gw.admin("GET", "/admin/limits").json()["rules"] == []


def test_sighup_reloads_limits_from_the_config_file(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}])
    try:
        assert [g.post("/v1/chat/completions", g.keys["a"], json=CHAT).status_code for _ in range(3)] == [200] * 3
        cfg = yaml.safe_load(g.config_path.read_text())
        cfg["limits"] = {"rules": [{"name": "reloaded", "requests_per_minute": 1}]}
        g.config_path.write_text(yaml.safe_dump(cfg))
        g.proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "config reloaded" not in g.log():
            time.sleep(0.05)
        assert [g.post("/v1/chat/completions", g.keys["a"], json=CHAT).status_code for _ in range(2)] == [200, 429]
        g.config_path.write_text("limits: {rules: [{name: x, requests_per_minute: -1}]}")
        g.proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "config reload refused" not in g.log():
            time.sleep(0.05)
        assert "config reload refused" in g.log()
        assert g.post("/v1/chat/completions", g.keys["a"], json=CHAT).status_code == 429  # old rules stand
    finally:
        g.stop()
