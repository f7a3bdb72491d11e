"""Request coalescing (issue 27, item 3): identical cacheable requests in flight at once are served by one
upstream call; each caller gets its own answer (whole or streamed, as it asked), its own usage record, and a
caller that leaves does not cut the others."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import pytest

from support import Gateway, Sim, start_gateway

N = 100


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("coalesce")
    sim = Sim(tmp, **{"base-ms": 4000})  # every answer takes 4 s: the requests overlap it, on a loaded machine too
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 30}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "a@example.com", "models": ["*"]}],
                      extra={"cache": {"rules": [{"name": "all", "ttl_s": 60}]}, "usage": {"flush_interval": 0.05}})
    yield g, sim
    g.stop()
    sim.stop()


def body(q: str, stream: bool) -> dict:
    out = {"model": "sim-small", "messages": [{"role": "user", "content": q}], "max_tokens": 8, "temperature": 0}
    return {**out, "stream": True} if stream else out


async def one(client: httpx.AsyncClient, key: str, q: str, stream: bool) -> str:
    """The answer's text, whole or assembled from its stream."""
    headers = {"Authorization": f"Bearer {key}"}
    if not stream:
        r = await client.post("/v1/chat/completions", headers=headers, json=body(q, False))
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["message"]["content"]
    text = []
    async with client.stream("POST", "/v1/chat/completions", headers=headers, json=body(q, True)) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                for c in json.loads(line[6:])["choices"]:
                    text.append(c["delta"].get("content") or "")
    return "".join(text)


async def crowd(g: Gateway, q: str, leavers: int = 0) -> list[str]:
    limits = httpx.Limits(max_connections=N + leavers, max_keepalive_connections=N + leavers)
    async with httpx.AsyncClient(base_url=g.url, limits=limits, timeout=60) as client:
        async def leave() -> None:  # a caller that gives up while it waits
            with pytest.raises(httpx.ReadTimeout):
                async with httpx.AsyncClient(base_url=g.url, timeout=httpx.Timeout(60, read=0.5)) as impatient:
                    await impatient.post("/v1/chat/completions", headers={"Authorization": f"Bearer {g.keys['app']}"},
                                         json=body(q, False))
        first = asyncio.ensure_future(one(client, g.keys["app"], q, False))
        await asyncio.sleep(0.3)  # the first is upstream now
        left = [asyncio.ensure_future(leave()) for _ in range(leavers)]
        rest = [one(client, g.keys["app"], q, i % 2 == 1) for i in range(N - 1)]
        got = await asyncio.gather(first, *rest, *left)
        return [t for t in got if t is not None]


def test_a_hundred_identical_requests_in_flight_make_one_upstream_call_and_a_hundred_usage_records(rig):
    g, sim = rig
    before, since = sim.stats()["chat_requests"], time.time() - 1
    texts = asyncio.run(crowd(g, "All at once, please.", leavers=3))
    assert sim.stats()["chat_requests"] - before == 1  # one upstream call for all of them
    assert len(texts) == N and len(set(texts)) == 1 and texts[0]  # every caller, whole or streamed, the same answer
    deadline = time.monotonic() + 10
    while True:
        rows = [r for r in g.admin("GET", f"/admin/usage?since={since}&limit=1000").json()["data"] if r["status"] == 200]
        if len(rows) >= N or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    sources = sorted(r["usage_source"] for r in rows)
    # a record per caller that stayed (those that left are recorded as they ended, not as answered: the listener
    # may or may not have noticed them leave before the answer came)
    assert len(rows) in (N, N + 3) and sources.count("upstream") == 1, sources
    assert sources.count("coalesced") >= N // 2, sources  # most waited on the first (a late one may be a plain hit)
    assert all(r["prompt_tokens"] == 0 and r["completion_tokens"] == 0 for r in rows if r["usage_source"] != "upstream")
