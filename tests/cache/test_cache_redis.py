"""The response cache on Redis (issue 27, item 1): two replicas share their entries, a purge on one (control
plane or CLI) empties them for both, and a Redis that is silent, refusing or never there leaves every request
answered within a bound (a bypass or a miss, never a hang), hits resuming when it returns."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import openai
import pytest

from store.pg_databases import drop_pg_database, fresh_pg_database
from support import REDIS_URL, Gateway, Sim, free_port, require_redis, start_gateway
from tcp_proxy import TcpProxy

IDENTITIES = [{"name": "app", "owner": "a@example.com", "models": ["*"]},
              {"name": "b-app", "owner": "b@example.com", "models": ["*"]}]
RULES = [{"name": "all", "ttl_s": 60}]
# redis_timeout_s 0.1 bounds each Redis call at 0.2 s; after a failure the cache is skipped for redis_retry_s.
# 3 s tells a bounded answer from a hang (the client waits 20 s) on a loaded 2-core machine.
WITHIN_S = 3.0


def cache_config(url: str, prefix: str) -> dict:
    return {"backend": "redis", "redis_url": url, "key_prefix": prefix, "redis_timeout_s": 0.1,
            "redis_retry_s": 0.5, "rules": RULES}


def ask(g: Gateway, q: str, who: str = "app") -> tuple[str, float]:
    """(the x-sluice-cache header, seconds taken)."""
    o = openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0, timeout=20)
    t0 = time.monotonic()
    raw = o.chat.completions.with_raw_response.create(model="sim-small", messages=[{"role": "user", "content": q}],
                                                      max_tokens=4, temperature=0)
    took = time.monotonic() - t0
    assert raw.parse().choices[0].message.content
    return raw.headers["x-sluice-cache"], took


@pytest.fixture(scope="module")
def pair(sim: Sim, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    """Two replicas on one Postgres store and one Redis."""
    require_redis()
    url = asyncio.run(fresh_pg_database())
    prefix = f"c{uuid.uuid4().hex[:8]}:"
    keys: dict[str, str] = {}
    gs = []
    for name in ("a", "b"):
        g = start_gateway(tmp_path_factory.mktemp(f"cache-{name}"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                          models=[{"name": "sim-small", "upstream": "sim"}],
                          identities=[{**i, **({"keys": [keys[i["name"]]]} if keys else {})} for i in IDENTITIES],
                          extra={"store": {"url": url}, "cache": cache_config(REDIS_URL, prefix),
                                 "usage": {"flush_interval": 0.05}})
        keys = keys or g.keys
        g.keys = keys
        gs.append(g)
    yield gs[0], gs[1]
    for g in gs:
        g.stop()
    asyncio.run(drop_pg_database(url))


def test_two_replicas_share_entries_and_a_purge_on_one_empties_them_for_both(pair):
    a, b = pair
    q = f"Shared by replicas {uuid.uuid4().hex[:6]}?"
    assert ask(a, q)[0] == "miss"
    time.sleep(0.1)  # written after the answer went out
    assert ask(b, q)[0] == "hit"  # made on a, served by b
    assert ask(b, q, "b-app")[0] == "miss"  # another identity's key space, on either replica
    app = next(i["id"] for i in a.admin("GET", "/admin/identities").json()["data"] if i["name"] == "app")
    r = a.admin("POST", "/admin/cache/purge", json={"identity": app})
    assert r.status_code == 200 and r.json()["purged"] >= 1, r.text
    assert ask(b, q)[0] == "miss"  # purged on a, gone for b
    time.sleep(0.1)
    assert ask(a, q)[0] == "hit"  # b's miss made it again
    env = {**os.environ, "SLUICE_ADMIN_URL": b.admin_url, "SLUICE_ADMIN_KEY": b.admin_key}
    out = subprocess.run([sys.executable, "-m", "sluice", "cache", "purge", "--identity", "app"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "purged 1 cached answers" in out.stdout, out.stdout + out.stderr
    assert ask(a, q)[0] == "miss"  # the CLI on b, gone for a


@pytest.fixture()
def proxied(sim: Sim, tmp_path) -> Iterator[tuple[Gateway, TcpProxy]]:
    require_redis()
    target = urlsplit(REDIS_URL)
    proxy = TcpProxy((target.hostname or "127.0.0.1", target.port or 6379))
    proxy.start()
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}], identities=IDENTITIES[:1],
                      extra={"cache": cache_config(f"redis://127.0.0.1:{proxy.port}/0", f"c{uuid.uuid4().hex[:8]}:")})
    yield g, proxy
    g.stop()
    proxy.close()


def test_a_silent_or_refusing_redis_never_hangs_a_request_and_hits_resume_when_it_returns(proxied):
    g, proxy = proxied
    q = f"Cached before the outage {uuid.uuid4().hex[:6]}."
    assert ask(g, q)[0] == "miss"
    time.sleep(0.1)
    assert ask(g, q)[0] == "hit"
    for cut in (proxy.blackhole, proxy.stop):  # a silent Redis, then refused connections
        cut()
        for i in range(4):
            header, took = ask(g, q)
            assert header in ("miss", "bypass") and took < WITHIN_S, (header, took)
    proxy.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and ask(g, q)[0] != "hit":
        time.sleep(0.2)  # the client reconnects on its own; no restart
    assert ask(g, q)[0] == "hit"  # the entry made before the outage, served again
    assert "redis unavailable" in g.log()


def test_a_redis_that_was_never_there_leaves_requests_answered_uncached(sim: Sim, tmp_path):
    closed = free_port()  # nothing listens here
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}], identities=IDENTITIES[:1],
                      extra={"cache": cache_config(f"redis://127.0.0.1:{closed}/0", "never:")})
    try:
        for _ in range(5):
            header, took = ask(g, "Is anyone there?")
            assert header in ("miss", "bypass") and took < WITHIN_S, (header, took)
    finally:
        g.stop()
