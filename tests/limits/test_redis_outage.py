"""Redis dying mid-run and coming back: the gateway reaches Redis through a TCP proxy the test
cuts and restores (the system Redis is never touched). Meanwhile no request hangs; afterwards
limits resume, exact, without a restart."""

from __future__ import annotations

import time
import uuid
from urllib.parse import urlsplit

import httpx
import pytest

from support import start_gateway
from tcp_proxy import TcpProxy
from test_limits import REDIS_URL, require_redis

CHAT = {"model": "m-rpm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# Redis calls time out after redis_timeout_s (0.25 s, twice for a script); 3 s leaves a loaded
# machine room while still telling a bounded refusal from a hang (the client waits 30 s).
WITHIN_S = 3.0


def _rig(sim, tmp_path, mode: str):
    require_redis()
    target = urlsplit(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    proxy.start()
    g = start_gateway(
        tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "m-rpm", "upstream": "sim", "upstream_model": "sim-small"}],
        identities=[{"name": "a", "owner": "o", "models": ["*"]}],
        extra={"limits": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
                          "key_prefix": f"o{uuid.uuid4().hex[:8]}:", "on_backend_failure": mode,
                          "rules": [{"name": "rpm", "match": {"model": "m-rpm"}, "requests_per_minute": 6}]}})
    return g, proxy


@pytest.fixture()
def rig(sim, tmp_path):
    g, proxy = _rig(sim, tmp_path, "closed")
    yield g, proxy
    g.stop()
    proxy.close()


@pytest.fixture(params=["closed", "open"])
def either(sim, tmp_path, request):
    g, proxy = _rig(sim, tmp_path, request.param)
    yield g, proxy, request.param
    g.stop()
    proxy.close()


def timed_chat(g) -> tuple[int, float, httpx.Response]:
    t0 = time.monotonic()
    r = g.post("/v1/chat/completions", g.keys["a"], json=CHAT)
    return r.status_code, time.monotonic() - t0, r


def test_redis_dying_mid_run_never_hangs_a_request_and_limits_resume_when_it_returns(rig):
    g, proxy = rig
    assert [timed_chat(g)[0] for _ in range(2)] == [200, 200]  # 4 of 6 left in Redis
    for cut in (proxy.blackhole, proxy.stop):  # a silent Redis, then refused connections
        cut()
        for _ in range(3):
            status, took, r = timed_chat(g)
            assert status == 503 and r.json()["error"]["code"] == "limiter_unavailable", r.text
            assert "Retry-After" in r.headers and took < WITHIN_S, took
    proxy.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (status := timed_chat(g)[0]) == 503:
        time.sleep(0.1)  # the client reconnects on its own; no restart
    assert status == 200  # the third of six
    # exact again: the counts made before the outage were kept, so three more fit and no more
    assert [timed_chat(g)[0] for _ in range(4)] == [200, 200, 200, 429]
    assert "limit backend reachable again" in g.log()


def ready_until(g, want: int, within: float = 10.0) -> dict:
    """Probe /readyz until it answers ``want``; every probe must answer within WITHIN_S. Its body."""
    deadline, seen = time.monotonic() + within, []
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        r = httpx.get(g.url + "/readyz", timeout=30)
        took = time.monotonic() - t0
        assert took < WITHIN_S, f"/readyz took {took:.2f}s: it must answer quickly, never hang"
        seen.append((r.status_code, r.json()))
        if r.status_code == want:
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"/readyz never answered {want} within {within}s: {seen[-3:]}")


def test_readiness_says_what_a_replica_serves_while_redis_is_away_and_recovers_with_it(either):
    g, proxy, mode = either
    body = ready_until(g, 200)
    assert body["status"] == "ready" and body["limits"] == "ok", body
    for cut in (proxy.blackhole, proxy.stop):  # a silent Redis, then refused connections
        cut()
        if mode == "closed":  # every limited call is refused: balancers must stop sending work here
            body = ready_until(g, 503)
            assert body["status"] == "not ready" and body["limits"] == "unavailable", body
            assert body["reasons"] == ["limits backend unreachable: limits.on_backend_failure is closed, "
                                       "so limited model calls are refused"], body
            assert timed_chat(g)[0] == 503
        else:  # still served, on this replica's own counters: ready, and saying it is degraded
            deadline = time.monotonic() + 10
            while (body := ready_until(g, 200))["limits"] != "unavailable" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert body["status"] == "degraded" and body["limits"] == "unavailable", body
            assert "limits.on_backend_failure is open" in body["reasons"][0], body
            assert timed_chat(g)[0] == 200
        proxy.start()
        deadline = time.monotonic() + 10
        while (body := ready_until(g, 200))["status"] != "ready" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert body["status"] == "ready" and body["limits"] == "ok" and "reasons" not in body, body
