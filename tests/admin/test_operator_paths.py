"""What an operator does to a running gateway: retarget a model, reload prices with SIGHUP,
watch an anomaly throttle come and go, stop the process without cutting anyone off, and drive
keys, usage and teams from the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import yaml

from support import Sim, start_gateway

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def test_a_routing_change_takes_effect_on_the_next_request_and_is_recorded(sim, tmp_path):
    other = Sim(tmp_path)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"},
                                           {"name": "other", "base_url": other.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}])
    try:
        r = g.admin("PUT", "/admin/routes/m", json={"upstream": "other", "upstream_model": "sim-small"})
        assert r.status_code == 200, r.text
        before = other.stats()["chat_requests"]
        assert g.post("/v1/chat/completions", g.keys["a"], json=CHAT).status_code == 200
        assert other.stats()["chat_requests"] - before == 1
        route = next(x for x in g.admin("GET", "/admin/routes").json()["data"] if x["model"] == "m")
        assert route["upstream"] == "other"
        change = next(c for c in g.admin("GET", "/admin/changes").json()["data"] if c["action"] == "route.retarget")
        assert change["target"] == "m" and change["actor"] == "config-admin-0"
        assert change["detail"]["from"]["upstream"] == "sim" and change["detail"]["to"]["upstream"] == "other"
    finally:
        g.stop()
        other.stop()


def _needs(r: httpx.Response) -> float:
    assert r.status_code == 429, r.text
    return float(re.search(r"this request needs ([0-9.]+)", r.json()["error"]["message"]).group(1))


def test_sighup_reloads_prices_from_the_config_file(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"prices": {"m": {"input": 0.0, "output": 1_000_000.0}},  # 1.00 an output token
                             "limits": {"rules": [{"name": "budget", "match": {"model": "m"}, "spend_per_day": 5.0}]}})
    try:
        assert _needs(g.post("/v1/chat/completions", g.keys["a"], json=CHAT)) == 10.0
        cfg = yaml.safe_load(g.config_path.read_text())
        cfg["prices"]["m"]["output"] = 3_000_000.0
        g.config_path.write_text(yaml.safe_dump(cfg))
        g.proc.popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and "config reloaded" not in g.log():
            time.sleep(0.05)
        assert _needs(g.post("/v1/chat/completions", g.keys["a"], json=CHAT)) == 30.0
    finally:
        g.stop()


def test_an_anomaly_throttle_is_a_metric_a_log_line_and_a_change_and_lifts_after_its_cooldown(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"limits": {"anomaly": {"window_s": 1, "baseline_windows": 2, "warmup_windows": 1,
                                                    "multiple": 5, "min_tokens": 10, "safe_requests_per_minute": 60,
                                                    "cooldown_s": 6}}})  # room for a loaded machine
    key = g.keys["a"]
    small = {**CHAT, "max_tokens": 2}
    try:
        assert g.post("/v1/chat/completions", key, json=small).status_code == 200  # a quiet first window
        time.sleep(1.05 - time.time() % 1.0)  # into the next calendar window
        spike = [g.post("/v1/chat/completions", key, json={**CHAT, "max_tokens": 20}).status_code for _ in range(10)]
        assert 429 in spike, spike
        assert g.admin("GET", "/admin/throttles").json()["data"][0]["identity"] == "cfg-a"
        metrics = httpx.get(g.admin_url + "/metrics").text
        assert re.search(r'sluice_limit_events_total\{kind="throttled"[^}]*\} 1', metrics), metrics[-2000:]
        assert "anomaly: identity cfg-a throttled" in g.log()
        until = g.admin("GET", "/admin/throttles").json()["data"][0]["until"] - 0.3
        while time.time() < until:  # held to one request a second meanwhile
            assert [g.post("/v1/chat/completions", key, json=small).status_code for _ in range(2)].count(200) <= 1
            time.sleep(0.5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and g.admin("GET", "/admin/throttles").json()["data"]:
            time.sleep(0.1)
        assert g.admin("GET", "/admin/throttles").json()["data"] == []
        assert [g.post("/v1/chat/completions", key, json=small).status_code for _ in range(3)] == [200] * 3  # lifted
        changes = g.admin("GET", "/admin/changes").json()["data"]
        assert [c["target"] for c in changes if c["action"] == "anomaly.throttle"] == ["cfg-a"]
    finally:
        g.stop()


def _long_answer(sim: Sim) -> str:
    """A prompt the sim answers with all of max_tokens=100 (no early stop), found on a zero-latency sim."""
    for i in range(100):
        prompt = f"drain probe {i}"
        r = httpx.post(sim.url + "/v1/chat/completions", json={"model": "sim-small", "max_tokens": 100,
                                                                "messages": [{"role": "user", "content": prompt}]})
        if r.json()["choices"][0]["finish_reason"] == "length":
            return prompt
    raise AssertionError("no long natural answer found")


def test_sigterm_lets_in_flight_requests_and_streams_finish(sim, tmp_path):
    prompt = _long_answer(sim)
    s = Sim(tmp_path, **{"decode-ms": 20})  # 100 tokens: two seconds each, so all six overlap even on a busy machine
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}])
    client = openai.OpenAI(base_url=g.v1, api_key=g.keys["a"], max_retries=0, timeout=30)
    ask = {**CHAT, "max_tokens": 100, "messages": [{"role": "user", "content": prompt}]}
    results: list[object] = []

    def plain() -> None:
        try:
            results.append(client.chat.completions.create(**ask).usage.completion_tokens)
        except Exception as exc:  # noqa: BLE001 - recorded and asserted on below
            results.append(exc)

    def streamed() -> None:
        try:
            results.append(sum(1 for c in client.chat.completions.create(**ask, stream=True)
                               if c.choices and c.choices[0].delta.content))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    try:
        threads = [threading.Thread(target=f) for f in (plain, plain, plain, streamed, streamed, streamed)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and s.stats()["in_flight"] < 6:
            time.sleep(0.02)
        assert s.stats()["in_flight"] == 6  # all six are under way
        g.proc.popen.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert results == [100] * 6, results  # every answer whole
        assert g.proc.popen.wait(20) == 0
    finally:
        g.stop()
        s.stop()


def _cli(g, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": g.admin_key, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sluice", *args], capture_output=True, text=True, env=env, timeout=60)


def test_the_cli_issues_rotates_revokes_and_lists_keys_and_reads_usage_and_teams(gw):
    ident = gw.admin("POST", "/admin/identities", json={"name": f"cli-{time.time_ns() % 10**9}", "owner": "o",
                                                        "models": ["sim-small"]}).json()
    chat = {**CHAT, "model": "sim-small", "max_tokens": 2}
    issued = json.loads(_cli(gw, "keys", "issue", ident["id"], "-o", "json").stdout)
    assert gw.post("/v1/chat/completions", issued["key"], json=chat).status_code == 200
    rotated = json.loads(_cli(gw, "keys", "rotate", issued["id"], "-o", "json").stdout)
    assert gw.post("/v1/chat/completions", issued["key"], json=chat).status_code == 401  # no overlap asked
    assert gw.post("/v1/chat/completions", rotated["key"], json=chat).status_code == 200
    r = _cli(gw, "keys", "revoke", rotated["id"])
    assert r.returncode == 0, r.stderr
    assert gw.post("/v1/chat/completions", rotated["key"], json=chat).status_code == 401
    listed = json.loads(_cli(gw, "keys", "list", ident["name"], "-o", "json").stdout)["data"]
    assert sorted(k["id"] for k in listed) == sorted([issued["id"], rotated["id"]])
    assert not any(k["active"] for k in listed) and rotated["key"] not in json.dumps(listed)

    team = f"cli-team-{time.time_ns() % 10**9}"
    assert _cli(gw, "teams", "create", team, "--owner", "o@example.com").returncode == 0
    assert team in _cli(gw, "teams", "list").stdout
    usage = _cli(gw, "usage")
    assert usage.returncode == 0 and ident["name"] in usage.stdout, usage.stdout + usage.stderr  # names, not ids
    r = _cli(gw, "keys", "revoke", "key-nope")
    assert r.returncode == 1 and "no key 'key-nope'" in r.stderr and "sluice keys list" in r.stderr
