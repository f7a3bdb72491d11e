"""Under contention a model's capacity is shared fairly by tokens served, not first come first served."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from support import Sim, start_gateway


@pytest.fixture(scope="module")
def fair(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fair")
    s = Sim(tmp, **{"decode-ms": 10})
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
        models=[{"name": "m-fair", "upstream": "sim", "upstream_model": "sim-small",
                 "capacity": {"concurrency": 2, "queue": 24, "queue_timeout_s": 10}},
                {"name": "m-tight", "upstream": "sim", "upstream_model": "sim-small",
                 "capacity": {"concurrency": 1, "queue": 1, "queue_timeout_s": 0.3}}],
        identities=[{"name": "heavy", "owner": "o", "models": ["*"]}, {"name": "light", "owner": "o", "models": ["*"]}],
    )
    yield g, s
    g.stop()
    s.stop()


async def _post(c: httpx.AsyncClient, g, who: str, model: str, max_tokens: int) -> tuple[int, float]:
    t0 = time.monotonic()
    r = await c.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys[who]}"},
                     json={"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "x"}]})
    return r.status_code, time.monotonic() - t0


def test_a_light_caller_is_not_starved_behind_a_heavy_one(fair):
    g, _ = fair

    async def scenario() -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
        async with httpx.AsyncClient(timeout=60) as c:
            heavy = [asyncio.create_task(_post(c, g, "heavy", "m-fair", 20)) for _ in range(16)]
            await asyncio.sleep(0.1)  # the heavy caller has filled the capacity and the queue
            light = []
            for _ in range(3):
                light.append(await _post(c, g, "light", "m-fair", 20))
            return await asyncio.gather(*heavy), light

    heavy, light = asyncio.run(scenario())
    assert all(code == 200 for code, _ in heavy + light)
    one = min(t for _, t in heavy)  # one request alone on a slot, about 20 x 10 ms
    slowest_heavy = max(t for _, t in heavy)
    # first come first served would make each light request wait for ~14 queued heavy ones (~7 rounds)
    assert max(t for _, t in light) < 2.5 * one, (light, one)
    assert slowest_heavy > 5 * one


def test_a_full_queue_is_429_and_a_missed_deadline_is_503_both_with_retry_after(fair):
    g, _ = fair

    async def one(c: httpx.AsyncClient) -> httpx.Response:
        return await c.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['heavy']}"},
                            json={"model": "m-tight", "max_tokens": 60, "messages": [{"role": "user", "content": "x"}]})

    async def scenario() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*[one(c) for _ in range(4)])

    rs = asyncio.run(scenario())
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) == 1  # one slot, 600 ms; the one queued waits 300 ms and gives up
    assert 429 in codes and 503 in codes
    for r in rs:
        if r.status_code in (429, 503):
            assert int(r.headers["Retry-After"]) >= 1, r.headers
            assert r.json()["error"]["code"] in ("capacity_exceeded", "capacity_timeout")
