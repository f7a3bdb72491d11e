"""A broken upstream gets a clear error, never a hang, a silent 200 or an internal URL."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from support import Sim, free_port, start_gateway

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    """A sim of its own (faults are global to a sim) and a gateway with short timeouts."""
    tmp = tmp_path_factory.mktemp("faults")
    s = Sim(tmp, **{"decode-ms": 2})  # paced, so a client can leave mid-stream
    dead = free_port()
    g = start_gateway(
        tmp,
        upstreams=[{"name": "sim", "base_url": s.url + "/v1", "read_timeout": 1.0, "total_timeout": 5.0},
                   {"name": "dead", "base_url": f"http://127.0.0.1:{dead}/v1", "connect_timeout": 1.0}],
        models=[{"name": "sim-small", "upstream": "sim"}, {"name": "gone", "upstream": "dead"}],
        identities=[{"name": "app", "owner": "o", "models": ["*"]}],
    )
    yield g, s
    g.stop()
    s.stop()


@pytest.fixture()
def gw_sim(rig):
    g, s = rig
    s.clear_faults()
    yield g, s
    s.clear_faults()


def _no_leak(r: httpx.Response, s: Sim) -> None:
    assert s.url not in r.text and str(s.port) not in r.text and "Traceback" not in r.text


def usage_rows(g, since: float) -> list[dict]:
    return g.admin("GET", f"/admin/usage?since={since}&limit=1000").json()["data"]


def test_upstream_500_becomes_502_with_openai_body(gw_sim):
    g, s = gw_sim
    s.faults(error_status=500, error_count=1)
    r = g.post("/v1/chat/completions", g.keys["app"], json=CHAT)
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_error"
    _no_leak(r, s)
    assert g.post("/v1/chat/completions", g.keys["app"], json=CHAT).status_code == 200


def test_upstream_unreachable_is_502_quickly(gw_sim):
    g, s = gw_sim
    t0 = time.monotonic()
    r = g.post("/v1/chat/completions", g.keys["app"], json={**CHAT, "model": "gone"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    assert time.monotonic() - t0 < 3
    assert "127.0.0.1" not in r.text


def test_hanging_upstream_is_504_within_the_read_timeout(gw_sim):
    g, s = gw_sim
    s.faults(hang=True)
    t0 = time.monotonic()
    r = g.post("/v1/chat/completions", g.keys["app"], json=CHAT)
    took = time.monotonic() - t0
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert 0.8 < took < 4


def test_upstream_429_keeps_retry_after(gw_sim):
    g, s = gw_sim
    # 7 s: neither the sim's usual 1 nor the gateway's fallback of 1, so only a relayed value passes.
    s.faults(error_status=429, error_count=1, retry_after=7)
    r = g.post("/v1/chat/completions", g.keys["app"], json=CHAT)
    assert r.status_code == 429 and r.json()["error"]["code"] == "upstream_rate_limited"
    assert r.headers["Retry-After"] == "7"


def test_upstream_503_is_503_with_retry_after(gw_sim):
    g, s = gw_sim
    s.faults(error_status=503, error_count=1)
    r = g.post("/v1/chat/completions", g.keys["app"], json=CHAT)
    assert r.status_code == 503 and "Retry-After" in r.headers


def test_upstream_error_before_a_stream_starts_is_a_plain_error(gw_sim):
    g, s = gw_sim
    s.faults(error_status=500, error_count=1)
    client = openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**CHAT, stream=True)
    assert info.value.status_code == 502


def test_stream_cut_midway_raises_in_the_sdk_and_settles_what_was_produced(gw_sim):
    g, s = gw_sim
    s.faults(disconnect_after_chunks=3)
    since = time.time()
    client = openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(**{**CHAT, "max_tokens": 20}, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                got.append(chunk.choices[0].delta.content)
    assert "ended before it was complete" in str(info.value)
    assert len(got) == 3
    rows = [r for r in usage_rows(g, since) if r["stream"]]
    assert rows and rows[0]["status"] == 502 and rows[0]["error_code"] == "upstream_stream_cut"
    assert rows[0]["completion_tokens"] == 3 and rows[0]["prompt_tokens"] > 0


def test_client_leaving_mid_stream_stops_the_upstream_and_settles_what_was_produced(gw_sim):
    g, s = gw_sim
    s.faults(delay_ms=0)
    since = time.time()
    before = s.stats()  # the sim is shared by the module: compare against its counters now
    received = 0
    with httpx.stream("POST", g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['app']}"},
                      json={**CHAT, "max_tokens": 2000, "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                received += 1
            if received == 5:
                break  # leave after five tokens of a 2000-token answer (4 s at 2 ms a token)
    deadline = time.time() + 5
    rows = []
    while time.time() < deadline:
        rows = [x for x in usage_rows(g, since) if x["stream"]]
        if rows:
            break
        time.sleep(0.1)
    assert rows and rows[0]["status"] == 499 and rows[0]["error_code"] == "client_closed"
    after = s.stats()
    produced = after["completion_tokens"] - before["completion_tokens"]
    assert after["client_disconnects"] - before["client_disconnects"] == 1  # the upstream stream was closed too
    assert produced < 1000, produced  # and it stopped generating long before the end
    # settled to what the upstream produced: at least what reached the client, at most what the sim made
    assert received <= rows[0]["completion_tokens"] <= produced, (received, rows[0]["completion_tokens"], produced)


def test_slow_upstream_within_timeouts_succeeds(gw_sim):
    g, s = gw_sim
    s.faults(delay_ms=300)
    r = g.post("/v1/chat/completions", g.keys["app"], json=CHAT)
    assert r.status_code == 200
