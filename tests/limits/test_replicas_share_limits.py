"""Two sluice processes sharing one Redis hold one limit, not two."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from sluice.identity import generate
from support import Sim, start_gateway
from test_limits import REDIS_URL, require_redis


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    require_redis()
    tmp = tmp_path_factory.mktemp("replicas")
    s = Sim(tmp)
    key = generate("dev")
    prefix = f"r{uuid.uuid4().hex[:8]}:"
    cfg = {"limits": {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix, "redis_timeout_s": 5, "rules": [
        {"name": "tokens", "match": {"model": "m-tokens"}, "output_tokens_per_minute": 100},
        {"name": "conc", "match": {"model": "m-conc"}, "concurrent_requests": 3},
    ]}}
    for i in range(2):
        (tmp / f"g{i}").mkdir()
    gws = [start_gateway(tmp / f"g{i}",
                         upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
                         models=[{"name": m, "upstream": "sim", "upstream_model": "sim-small"} for m in ("m-tokens", "m-conc")],
                         identities=[{"name": "a", "owner": "o", "models": ["*"], "keys": [key]}], extra=cfg)
           for i in range(2)]
    yield gws, s, key
    for g in gws:
        g.stop()
    s.stop()


async def _burst(gws, key: str, model: str, n: int, max_tokens: int) -> list[int]:
    async with httpx.AsyncClient(timeout=30) as c:
        rs = await asyncio.gather(*[
            c.post(gws[i % 2].v1 + "/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "x"}]})
            for i in range(n)])
    return [r.status_code for r in rs]


def test_a_token_limit_holds_across_replicas(pair):
    gws, s, key = pair
    before = s.stats()["completion_tokens"]
    got = asyncio.run(_burst(gws, key, "m-tokens", 40, 10))
    admitted_tokens = s.stats()["completion_tokens"] - before
    assert got.count(200) == 10 and got.count(429) == 30
    assert admitted_tokens <= 100 + 10  # at most one request's reservation over the limit
    assert admitted_tokens == 100


def test_a_concurrency_limit_holds_across_replicas(pair):
    gws, s, key = pair
    s.faults(delay_ms=700)
    try:
        got = asyncio.run(_burst(gws, key, "m-conc", 12, 2))
    finally:
        s.clear_faults()
    assert got.count(200) == 3 and got.count(429) == 9
