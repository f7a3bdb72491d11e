"""The fault matrix: each upstream failure leads to the documented outcome, within one attempt budget.

Before the first byte reaches the client (an error status, a cut, a stall, a malformed first event) a
request falls back like a plain one; after it, the stream ends with an in-band error event. Nothing
hangs: every case ends within its timeouts plus a second, and no upstream request is left in flight.
"""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from support import Sim, start_gateway

READ_TIMEOUT = 1.0
MAX_ATTEMPTS = 3
VERSIONS = [{"version": "primary", "upstream": "p", "upstream_model": "sim-small", "approved": True},
            {"version": "backup", "upstream": "f", "upstream_model": "sim-small", "approved": True}]
ROUTE = {"name": "main", "match": {"models": ["m"]}, "targets": [{"target": "m@primary"}],
         "fallbacks": ["m@backup"], "retries": 1}
# Three retries and a fallback would be five attempts: more than the budget allows.
GREEDY = {"name": "greedy", "match": {"models": ["g"]}, "targets": [{"target": "m@primary"}],
          "fallbacks": ["m@backup"], "retries": 3}


def gateway(tmp, p: Sim, f: Sim, breaker: dict):
    return start_gateway(
        tmp,
        upstreams=[{"name": "p", "base_url": p.url + "/v1", "read_timeout": READ_TIMEOUT, "total_timeout": 10,
                    "extra_params": "vllm"},
                   {"name": "f", "base_url": f.url + "/v1", "read_timeout": READ_TIMEOUT, "total_timeout": 10}],
        models=[], identities=[{"name": "app", "owner": "o", "models": ["*"]}],
        extra={"registry": [{"name": "m", "versions": VERSIONS}], "routes": [ROUTE, GREEDY],
               "resilience": {"max_attempts": MAX_ATTEMPTS, "backoff_ms": 20, "keepalive_s": 0.2, "breaker": breaker}},
    )


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fault-matrix")
    p, f = Sim(tmp), Sim(tmp)
    # Breakers that never open here, so one case's failures do not steer the next; they have their own test.
    g = gateway(tmp, p, f, {"failures": 1000, "window_s": 1})
    yield g, p, f
    g.stop()
    p.stop()
    f.stop()


@pytest.fixture()
def case(rig):
    g, p, f = rig
    p.clear_faults()
    f.clear_faults()
    started = time.monotonic()
    yield g, p, f
    p.clear_faults()
    f.clear_faults()
    # Nothing is left running upstream: every request this case made has ended on both sims.
    deadline = time.monotonic() + 1.0
    while (p.stats()["in_flight"] or f.stats()["in_flight"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert p.stats()["in_flight"] == 0 and f.stats()["in_flight"] == 0
    assert time.monotonic() - started < MAX_ATTEMPTS * READ_TIMEOUT + 1.0 + 1.0  # timeouts + 1 s (+1 s for the checks)


def sdk(g) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0, timeout=15)


def body(max_tokens: int = 8) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


def why(g, rid: str) -> dict:
    return g.admin("GET", f"/admin/routes/decisions/{rid}").json()


def stream_raw(g, max_tokens: int = 8, **extra) -> tuple[httpx.Response, str]:
    with httpx.stream("POST", g.v1 + "/chat/completions", json={**body(max_tokens), "stream": True, **extra},
                      headers={"Authorization": f"Bearer {g.keys['app']}"}, timeout=15) as r:
        return r, r.read().decode()


def content_events(text: str) -> int:
    return sum(1 for line in text.split("\n\n") if '"content":"' in line and '"content":""' not in line)


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_error_status_before_the_first_byte_falls_back_within_the_budget(case, status):
    g, p, f = case
    p.faults(error_status=status)
    r = g.post("/v1/chat/completions", g.keys["app"], json=body())
    assert r.status_code == 200 and r.headers["x-sluice-route"] == "main; target=m@backup"
    attempts = why(g, r.headers["x-request-id"])["attempts"]
    assert [a["target"] for a in attempts] == ["m@primary", "m@primary", "m@backup"]  # one retry, then the fallback
    assert len(attempts) <= MAX_ATTEMPTS


@pytest.mark.parametrize("status", [429, 500])
def test_a_stream_refused_before_its_first_byte_falls_back_and_completes(case, status):
    g, p, f = case
    p.faults(error_status=status)
    words = [c.choices[0].delta.content for c in sdk(g).chat.completions.create(**body(), stream=True)
             if c.choices and c.choices[0].delta.content]
    assert words  # the SDK sees a whole answer
    r, text = stream_raw(g)
    assert r.status_code == 200 and r.headers["x-sluice-route"] == "main; target=m@backup"
    assert text.endswith("data: [DONE]\n\n")
    assert len(why(g, r.headers["x-request-id"])["attempts"]) == MAX_ATTEMPTS


def test_the_attempt_budget_bounds_retries_and_fallbacks_together(case):
    g, p, f = case
    p.faults(error_status=500)
    f.faults(error_status=500)
    before = p.stats()["chat_requests"] + f.stats()["chat_requests"]
    r = g.post("/v1/chat/completions", g.keys["app"], json=body())
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"
    assert p.stats()["chat_requests"] + f.stats()["chat_requests"] - before == MAX_ATTEMPTS
    assert p.url not in r.text and "Traceback" not in r.text
    # A route whose retries alone exceed the budget stops at the budget too.
    before = p.stats()["chat_requests"] + f.stats()["chat_requests"]
    r = g.post("/v1/chat/completions", g.keys["app"], json={**body(), "model": "g"})
    assert r.status_code == 502
    assert p.stats()["chat_requests"] + f.stats()["chat_requests"] - before == MAX_ATTEMPTS


def test_a_client_error_is_not_retried_anywhere(case):
    g, p, f = case
    p.faults(error_status=400)
    r = g.post("/v1/chat/completions", g.keys["app"], json=body())
    assert r.status_code == 400
    assert len(why(g, r.headers["x-request-id"])["attempts"]) == 1


def test_a_cut_after_40_of_64_chunks_ends_in_band_and_spends_what_was_produced(case):
    g, p, f = case
    p.faults(disconnect_after_chunks=40)
    since = time.time()
    r, text = stream_raw(g, max_tokens=64, ignore_eos=True)
    assert r.status_code == 200
    assert content_events(text) == 40
    assert '"code":"upstream_stream_cut"' in text and "[DONE]" not in text  # in-band error, clean close
    rid = r.headers["x-request-id"]
    assert [a["target"] for a in why(g, rid)["attempts"]] == ["m@primary"]  # bytes were sent: no retry
    rows = [u for u in g.admin("GET", f"/admin/usage?since={since}").json()["data"] if u["request_id"] == rid]
    assert rows[0]["completion_tokens"] == 40 and rows[0]["error_code"] == "upstream_stream_cut"


def test_the_sdk_raises_on_a_stream_cut_midway(case):
    g, p, f = case
    p.faults(disconnect_after_chunks=5)
    with pytest.raises(openai.APIError, match="ended before it was complete"):
        for _ in sdk(g).chat.completions.create(**body(32), stream=True):
            pass


def test_a_stall_midway_ends_in_band_after_the_read_timeout(case):
    g, p, f = case
    p.faults(stall_after_chunks=5)
    t0 = time.monotonic()
    r, text = stream_raw(g, max_tokens=32, ignore_eos=True)
    assert content_events(text) == 5 and '"code":"upstream_stream_stalled"' in text
    assert time.monotonic() - t0 < READ_TIMEOUT + 1.0
    assert len(why(g, r.headers["x-request-id"])["attempts"]) == 1


def test_a_stall_before_the_first_event_falls_back(case):
    g, p, f = case
    p.faults(stall_after_chunks=0)
    r, text = stream_raw(g)
    assert r.headers["x-sluice-route"] == "main; target=m@primary"  # decided before the stall was known
    assert text.endswith("data: [DONE]\n\n") and content_events(text) > 0
    attempts = why(g, r.headers["x-request-id"])["attempts"]
    assert attempts[0]["outcome"] == "upstream_stream_stalled" and attempts[-1] == {**attempts[-1], "outcome": "ok"}
    assert len(attempts) <= MAX_ATTEMPTS


def test_a_cut_before_the_first_event_falls_back(case):
    g, p, f = case
    p.faults(cut_before_first_event=True)
    r, text = stream_raw(g)
    assert text.endswith("data: [DONE]\n\n")
    assert why(g, r.headers["x-request-id"])["attempts"][-1]["target"] == "m@backup"


def test_a_malformed_event_midway_ends_in_band(case):
    g, p, f = case
    p.faults(malformed_after_chunks=5)
    r, text = stream_raw(g, max_tokens=32, ignore_eos=True)
    assert content_events(text) == 5 and '"code":"upstream_bad_event"' in text
    assert "this is not an event" not in text  # the bad event itself never reaches the client


def test_a_malformed_first_event_falls_back(case):
    g, p, f = case
    p.faults(malformed_after_chunks=0)
    r, text = stream_raw(g)
    assert text.endswith("data: [DONE]\n\n") and "this is not an event" not in text
    assert why(g, r.headers["x-request-id"])["attempts"][-1]["target"] == "m@backup"


def test_a_slow_first_token_gets_keepalive_comments_and_the_stream_completes(case):
    g, p, f = case
    p.faults(first_token_delay_ms=700)
    r, text = stream_raw(g)
    head = text.split("data:", 1)[0]
    assert head.count(": keepalive\n\n") >= 2  # every 0.2 s until the first token at 0.7 s
    assert text.endswith("data: [DONE]\n\n")
    for _ in sdk(g).chat.completions.create(**body(), stream=True):  # the SDK skips the comments
        pass


def test_the_breaker_opens_after_failures_and_closes_after_a_good_probe(tmp_path):
    p, f = Sim(tmp_path), Sim(tmp_path)
    g = gateway(tmp_path, p, f, {"failures": 3, "window_s": 10, "open_s": 1})
    try:
        p.faults(error_status=500)
        for _ in range(2):  # two requests: four failed attempts on the primary, fallback answers
            assert g.post("/v1/chat/completions", g.keys["app"], json=body()).status_code == 200
        hits = p.stats()["chat_requests"]
        r = g.post("/v1/chat/completions", g.keys["app"], json=body())
        assert r.status_code == 200 and r.headers["x-sluice-route"] == "main; target=m@backup"
        assert p.stats()["chat_requests"] == hits  # open: the primary is not asked at all
        d = why(g, r.headers["x-request-id"])
        assert d["candidates"][0]["breaker"] == "open" and "m@primary: breaker open" in d["skipped"]
        p.clear_faults()
        time.sleep(1.1)  # open_s passes: the next request is a half-open probe
        r = g.post("/v1/chat/completions", g.keys["app"], json=body())
        assert r.headers["x-sluice-route"] == "main; target=m@primary"
        assert why(g, r.headers["x-request-id"])["candidates"][0]["breaker"] == "closed"
    finally:
        g.stop()
        p.stop()
        f.stop()
