"""Concurrency slots come back however a request ends (the client leaves, the upstream cuts the
stream), and streamed answers carry the same ``x-ratelimit-*`` headers as plain ones."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from support import Sim, start_gateway

CHAT = {"model": "m-conc", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "stream": True}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("slots")
    s = Sim(tmp, **{"decode-ms": 5})  # 500 tokens take 2.5 s: long enough to leave halfway
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
                      models=[{"name": "m-conc", "upstream": "sim", "upstream_model": "sim-small"},
                              {"name": "m-tokens", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"limits": {"rules": [
                          {"name": "conc", "match": {"model": "m-conc"}, "concurrent_requests": 2},
                          {"name": "tokens", "match": {"model": "m-tokens"}, "requests_per_minute": 100,
                           "output_tokens_per_minute": 1000}]}})
    yield g, s
    g.stop()
    s.stop()


def leave_after_first_token(g) -> None:
    with httpx.stream("POST", g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['a']}"},
                      json=CHAT, timeout=10) as r:
        assert r.status_code == 200
        next(r.iter_lines())


def wait_for_free_slot(g, within: float = 5.0) -> int:
    """Status of a plain request, retried while the slots are still held (the release is async)."""
    deadline = time.monotonic() + within
    while True:
        r = g.post("/v1/chat/completions", g.keys["a"], json={**CHAT, "stream": False, "max_tokens": 2})
        if r.status_code != 429 or time.monotonic() > deadline:
            return r.status_code
        time.sleep(0.1)


def test_slots_are_freed_when_clients_leave_mid_stream(rig):
    g, _ = rig
    for _ in range(3):  # more departures than slots: a leak would hold both for good
        leave_after_first_token(g)
    assert wait_for_free_slot(g) == 200
    assert [g.post("/v1/chat/completions", g.keys["a"], json={**CHAT, "stream": False, "max_tokens": 2}).status_code
            for _ in range(2)] == [200, 200]


def test_slots_are_freed_when_the_upstream_cuts_the_stream(rig):
    g, s = rig
    client = openai.OpenAI(base_url=g.v1, api_key=g.keys["a"], max_retries=0)
    s.faults(disconnect_after_chunks=2)
    try:
        for _ in range(3):
            with pytest.raises(openai.APIError):
                list(client.chat.completions.create(**CHAT))
    finally:
        s.clear_faults()
    assert wait_for_free_slot(g) == 200


def test_streamed_answers_carry_the_ratelimit_headers(rig):
    g, _ = rig
    with httpx.stream("POST", g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['a']}"},
                      json={"model": "m-tokens", "stream": True, "max_tokens": 10,
                            "messages": [{"role": "user", "content": "hi"}]}, timeout=10) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        headers = r.headers
        r.read()
    assert headers["x-ratelimit-limit-requests"] == "100" and headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(headers["x-ratelimit-remaining-requests"]) < 100
    assert int(headers["x-ratelimit-remaining-tokens"]) <= 990
    assert headers["x-ratelimit-reset-requests"] and headers["x-ratelimit-reset-tokens"]
