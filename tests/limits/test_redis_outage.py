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


@pytest.fixture()
def rig(sim, tmp_path):
    require_redis()
    target = urlsplit(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    proxy.start()
    g = start_gateway(
        tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "m-rpm", "upstream": "sim", "upstream_model": "sim-small"}],
        identities=[{"name": "a", "owner": "o", "models": ["*"]}],
        extra={"limits": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{proxy.port}/0",
                          "key_prefix": f"o{uuid.uuid4().hex[:8]}:", "on_backend_failure": "closed",
                          "rules": [{"name": "rpm", "match": {"model": "m-rpm"}, "requests_per_minute": 6}]}})
    yield g, proxy
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
