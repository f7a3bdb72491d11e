"""Limits change without a restart: on the control plane by an operator, or by SIGHUP reload."""

from __future__ import annotations

import signal
import time

import httpx
import yaml

from support import start_gateway

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


EMBED = {"model": "sim-embed", "input": "x"}
LOOSE = [{"name": "loose", "match": {"model": "sim-embed"}, "requests_per_minute": 1000}]


def _embed_statuses(g, n: int) -> list[int]:
    return [g.post("/v1/embeddings", g.keys["app"], json=EMBED).status_code for _ in range(n)]


def test_an_operator_replaces_limits_the_next_request_obeys_and_the_change_records_before_and_after(gw):
    op = gw.admin("POST", "/admin/identities", json={"name": f"ops-{time.time_ns() % 10**9}", "owner": "sre@example.com",
                                                     "roles": ["operator"]}).json()
    key = gw.admin("POST", f"/admin/identities/{op['id']}/keys", json={"plane": "control"}).json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    assert httpx.put(gw.admin_url + "/admin/limits", headers=auth, json={"rules": LOOSE}).status_code == 200
    tight = [{"name": "tight", "match": {"model": "sim-embed"}, "requests_per_minute": 2}]
    try:
        r = httpx.put(gw.admin_url + "/admin/limits", headers=auth, json={"rules": tight})
        assert r.status_code == 200, r.text
        assert _embed_statuses(gw, 3) == [200, 200, 429]
        assert [x["name"] for x in httpx.get(gw.admin_url + "/admin/limits", headers=auth).json()["rules"]] == ["tight"]
        changes = gw.admin("GET", "/admin/changes?limit=50").json()["data"]
        change = next(c for c in changes if c["action"] == "limits.replace" and c["actor"] == op["name"])  # newest first
        assert [x["name"] for x in change["detail"]["from"]] == ["loose"]
        assert [x["name"] for x in change["detail"]["to"]] == ["tight"]
        assert change["detail"]["to"][0]["requests_per_minute"] == 2
    finally:
        assert httpx.put(gw.admin_url + "/admin/limits", headers=auth, json={"rules": []}).status_code == 200
    assert _embed_statuses(gw, 1) == [200]


def test_invalid_limits_are_refused_and_change_nothing(gw):
    r = gw.admin("PUT", "/admin/limits", json={"rules": LOOSE})
    assert r.status_code == 200
    standing = r.json()["rules"]
    try:
        for body in ({"rules": [{"name": "x", "requests_per_minute": 0}]},
                     {"rules": [{"name": "x"}, {"name": "x"}]},
                     {"rules": [{"name": "bad name!"}]},
                     {"rules": "none"}):
            r = gw.admin("PUT", "/admin/limits", json=body)
            assert r.status_code == 400, body
        assert gw.admin("GET", "/admin/limits").json()["rules"] == standing
        assert standing[0]["requests_per_minute"] == 1000
    finally:
        assert gw.admin("PUT", "/admin/limits", json={"rules": []}).status_code == 200


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
