"""A model's queue is shared fairly: one caller flooding it cannot lock every other caller
out with 429s (issue 9, item 11)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from support import Sim, start_gateway


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fairq")
    s = Sim(tmp, **{"decode-ms": 10})
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
        models=[{"name": "m", "upstream": "sim", "upstream_model": "sim-small",
                 "capacity": {"concurrency": 1, "queue": 4, "queue_timeout_s": 30}}],
        identities=[{"name": n, "owner": "o", "models": ["*"]} for n in ("flood", "quiet", "late")],
    )
    yield g, s
    g.stop()
    s.stop()


async def _post(c: httpx.AsyncClient, g, who: str) -> httpx.Response:
    return await c.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys[who]}"},
                        json={"model": "m", "max_tokens": 40, "messages": [{"role": "user", "content": "x"}]})


def test_a_caller_flooding_the_queue_cannot_keep_another_caller_out(rig):
    g, s = rig

    async def scenario() -> tuple[list[int], list[int]]:
        async with httpx.AsyncClient(timeout=60) as c:
            flood = [asyncio.create_task(_post(c, g, "flood")) for _ in range(12)]
            # the flood holds the one slot and all four places in the queue (about 400 ms a request)
            for _ in range(100):
                await asyncio.sleep(0.02)
                if s.stats()["in_flight"] >= 1 and sum(t.done() for t in flood) >= 7:
                    break
            others = await asyncio.gather(_post(c, g, "quiet"), _post(c, g, "late"))
            return [r.status_code for r in await asyncio.gather(*flood)], [r.status_code for r in others]

    flood, others = asyncio.run(scenario())
    assert others == [200, 200], (flood, others)  # each had its share of the queue though the flood had filled it
    assert flood.count(429) >= 7  # the flood's own excess (and the places it gave up)
    assert flood.count(200) >= 1
