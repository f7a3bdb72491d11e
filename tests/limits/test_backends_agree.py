"""The memory and Redis backends make the same decisions on the same traffic, including a
request that outlives its counters' expiry (issue 9, item 10).

One scenario runs against a gateway on each backend, side by side in front of one sim; the
decisions (status, and the limit a 429 names) must be identical, and what the rules say.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from support import Sim, start_gateway
from test_limits import REDIS_URL, require_redis

DECODE_MS = 100
# 60,000 input tokens a minute refill 1,000 a second, so a bucket holding a 504-token
# reservation expires on Redis about 2 s later (once it would be full again)
ITPM = 60_000
RULES = [
    {"name": "rpm", "match": {"model": "m-rpm"}, "requests_per_minute": 3},
    {"name": "otpm", "match": {"model": "m-otpm"}, "output_tokens_per_minute": 50},
    {"name": "conc", "match": {"model": "m-conc"}, "concurrent_requests": 2},
    {"name": "spend", "match": {"model": "m-spend"}, "spend_per_day": 30.0},
    {"name": "long", "match": {"model": "m-long"}, "input_tokens_per_minute": ITPM},
]
MODELS = ["m-rpm", "m-otpm", "m-conc", "m-spend", "m-long"]
# 2,000 dots: sluice reserves 504 prompt tokens (four characters a token, plus four), the sim
# counts 2,001 (every symbol a token), so settling charges about 1,500 more than was reserved
DOTS = "." * 2000
# a prompt sluice counts at ITPM - 300 tokens: it fits a full bucket, not one that was charged those 1,500
NEAR_FULL = "abcd" * (ITPM - 300 - 4)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    require_redis()
    tmp = tmp_path_factory.mktemp("agree")
    s = Sim(tmp, **{"decode-ms": DECODE_MS})
    gws = {}
    for backend in ("memory", "redis"):
        (tmp / backend).mkdir()
        gws[backend] = start_gateway(
            tmp / backend, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
            models=[{"name": m, "upstream": "sim", "upstream_model": "sim-small"} for m in MODELS],
            identities=[{"name": "a", "owner": "o", "models": ["*"]}],
            extra={"limits": {"backend": backend, "redis_url": REDIS_URL, "key_prefix": f"a{uuid.uuid4().hex[:8]}:",
            # a Redis call on a busy machine can outlast the 0.25 s default: a 503, not the decision under test
                              "rules": RULES, "redis_timeout_s": 5},
                   "prices": {"m-spend": {"input": 0.0, "output": 10_000_000.0}}})  # 10.00 an output token
    yield gws
    for g in gws.values():
        g.stop()
    s.stop()


def _decision(r: httpx.Response) -> str:
    if r.status_code == 429:
        return "429 " + r.json()["error"]["message"].split(":", 1)[0].removeprefix("Rate limit reached for ")
    return str(r.status_code)


async def _scenario(g) -> list[str]:
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {g.keys['a']}"}) as c:
        async def chat(model: str, max_tokens: int, content: str = "x", **kw) -> str:
            r = await c.post(g.v1 + "/chat/completions", json={
                "model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}], **kw})
            if kw.get("stream"):
                assert "data: [DONE]" in r.text
            return _decision(r)

        out = [await chat("m-rpm", 1) for _ in range(4)]
        out += [await chat("m-otpm", 20) for _ in range(3)]
        out += sorted(await asyncio.gather(*[chat("m-conc", 10) for _ in range(3)]))
        out.append(await chat("m-conc", 1))  # the leases were given back
        out += [await chat("m-spend", 1) for _ in range(4)]
        # the long one: a stream of 30 tokens, about 3 s, outliving its bucket's expiry on Redis
        out.append(await chat("m-long", 30, DOTS, stream=True))
        await asyncio.sleep(0.05)  # Redis settles off the request path
        out.append(await chat("m-long", 1, NEAR_FULL))
        return out


EXPECTED = (["200"] * 3 + ["429 rpm (identity=cfg-a)"]
            + ["200"] * 2 + ["429 otpm (identity=cfg-a)"]
            + ["200", "200", "429 conc (identity=cfg-a)", "200"]
            + ["200"] * 3 + ["429 spend (identity=cfg-a)"]
            + ["200", "429 long (identity=cfg-a)"])


def test_memory_and_redis_decide_the_same_including_a_request_that_outlives_its_counters(pair):
    async def both() -> list[list[str]]:
        return await asyncio.gather(_scenario(pair["memory"]), _scenario(pair["redis"]))

    memory, redis = asyncio.run(both())
    assert memory == redis
    assert memory == EXPECTED
