"""Every request leaves a usage record; streams are never recorded with zero tokens; nothing
is lost on graceful shutdown; metrics are exposed; no key appears in any log line."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time

import httpx
import openai
import pytest

from support import Sim, start_gateway

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hello usage"}], "max_tokens": 7}


def _rows(g, since):
    return g.admin("GET", f"/admin/usage?since={since}&limit=10000").json()["data"]


def test_non_streaming_and_streaming_requests_record_real_tokens(gw):
    since = time.time()
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"])
    r = client.chat.completions.create(**CHAT)
    list(client.chat.completions.create(**CHAT, stream=True))  # caller did not ask for usage
    rows = _rows(gw, since)
    plain = [x for x in rows if not x["stream"] and x["model"] == "sim-small" and x["status"] == 200]
    streamed = [x for x in rows if x["stream"]]
    assert plain and plain[0]["completion_tokens"] == 7 and plain[0]["prompt_tokens"] == r.usage.prompt_tokens
    assert streamed and streamed[0]["completion_tokens"] == 7 and streamed[0]["prompt_tokens"] == r.usage.prompt_tokens
    assert streamed[0]["usage_source"] == "upstream" and streamed[0]["ttft_ms"] is not None
    ident = gw.admin("GET", "/admin/identities").json()["data"]
    app_id = next(i["id"] for i in ident if i["name"] == "app")
    assert plain[0]["identity_id"] == app_id and plain[0]["upstream"] == "sim"


@pytest.fixture()
def rig(tmp_path):
    """A sim of its own (faults are global to a sim), paced so a client can leave mid-stream."""
    s = Sim(tmp_path, **{"decode-ms": 2})
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"},
                              {"name": "one-a-minute", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"limits": {"rules": [{"name": "one", "match": {"model": "one-a-minute"},
                                                   "requests_per_minute": 1}]}})
    yield g, s
    g.stop()
    s.stop()


def test_every_request_leaves_one_usage_record_whatever_its_outcome(rig):
    g, s = rig
    since = time.time()
    key = g.keys["a"]
    chat = lambda **kw: g.post("/v1/chat/completions", key, json={**CHAT, **kw})  # noqa: E731
    expected = []

    def outcome(status: int, stream: bool = False) -> None:
        expected.append((status, stream))

    assert chat().status_code == 200; outcome(200)  # noqa: E702
    assert g.post("/v1/chat/completions", "slk_dev_nope", json=CHAT).status_code == 401; outcome(401)  # noqa: E702
    assert chat(temperature=9).status_code == 400; outcome(400)  # noqa: E702
    assert chat(model="no-such-model").status_code == 404; outcome(404)  # noqa: E702
    assert chat(model="one-a-minute").status_code == 200; outcome(200)  # noqa: E702
    assert chat(model="one-a-minute").status_code == 429; outcome(429)  # noqa: E702
    s.faults(error_status=500, error_count=1)
    assert chat().status_code == 502; outcome(502)  # noqa: E702
    client = openai.OpenAI(base_url=g.v1, api_key=key, max_retries=0)
    assert len(list(client.chat.completions.create(**CHAT, stream=True))) > 7; outcome(200, True)  # noqa: E702
    s.faults(disconnect_after_chunks=3)
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(**CHAT, stream=True))
    outcome(502, True)
    s.clear_faults()
    with httpx.stream("POST", g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={**CHAT, "max_tokens": 2000, "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        next(r.iter_bytes())  # then the client leaves
    outcome(499, True)

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = _rows(g, since)
        if len(rows) >= len(expected):
            break
        time.sleep(0.1)
    time.sleep(0.5)  # and nothing more arrives
    got = sorted((x["status"], x["stream"]) for x in _rows(g, since))
    assert got == sorted(expected)


def test_metrics_expose_requests_latency_ttft_and_tokens(gw):
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"])
    client.chat.completions.create(**CHAT)
    list(client.chat.completions.create(**CHAT, stream=True))
    text = httpx.get(gw.admin_url + "/metrics").text
    assert re.search(r'sluice_requests_total\{endpoint="chat.completions",model="sim-small",status="200"\} [1-9]', text)
    assert 'sluice_request_duration_seconds_bucket{le="0.005",model="sim-small",status="200"}' in text
    assert 'sluice_upstream_duration_seconds_count{upstream="sim"}' in text
    assert 'sluice_time_to_first_token_seconds_count{model="sim-small"}' in text
    assert re.search(r'sluice_tokens_total\{direction="output",model="sim-small"\} [1-9]', text)


def test_nothing_is_lost_on_graceful_shutdown(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"usage": {"flush_interval": 30}})  # nothing flushes before shutdown

    async def fire(n: int) -> list[int]:
        async with httpx.AsyncClient(timeout=30) as c:
            rs = await asyncio.gather(*[c.post(g.v1 + "/chat/completions", json=CHAT,
                                               headers={"Authorization": f"Bearer {g.keys['a']}"}) for _ in range(n)])
        return [r.status_code for r in rs]

    statuses = asyncio.run(fire(300))
    assert statuses.count(200) == 300
    assert g.stop() == 0
    db = sqlite3.connect(tmp_path / "sluice.db")
    (count,) = db.execute("select count(*) from usage where status = 200").fetchone()
    db.close()
    assert count == 300


def test_no_key_appears_in_any_log_line(gw, sim):
    # exercise the paths that log: bad keys, upstream trouble, admin calls
    gw.post("/v1/chat/completions", gw.keys["app"][:-2] + "xx", json=CHAT)
    gw.post("/v1/chat/completions", gw.admin_key, json=CHAT)
    httpx.get(gw.admin_url + "/admin/identities", headers={"Authorization": f"Bearer {gw.keys['app']}"})
    log = gw.log()
    for secret in [*gw.keys.values(), gw.admin_key, "test-pepper-0123456789abcdef"]:
        assert secret not in log
        assert secret[9:39] not in log
