"""The bulkhead scenario, shared by tests/routing/test_bulkheads.py and bench/bench_bulkhead.py.

Two models on two sim upstreams: A's bulkhead is 16 in flight and a line of 500; B's upstream answers
in ~50 ms (the sim's sleeps, not CPU, set B's time). B is measured alone, then A's upstream hangs (the
sim's ``hang`` fault: it accepts and never answers) and 600 requests go to A: 16 in flight, 500 in the
line, 84 over; B is measured again while the line stays full, and one overflow request is sent in
Anthropic Messages' and the Responses API's shapes.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx

from support import Gateway, Sim, start_gateway

IN_FLIGHT, QUEUE, OVERFLOW = 16, 500, 84


def start(tmp: Path) -> tuple[Gateway, Sim, Sim]:
    a = Sim(tmp)
    b = Sim(tmp, **{"base-ms": 20, "decode-ms": 4})
    g = start_gateway(
        tmp, upstreams=[{"name": "a", "base_url": a.url + "/v1", "read_timeout": 60,
                         "max_in_flight": IN_FLIGHT, "max_queue": QUEUE, "queue_timeout": 120},
                        {"name": "b", "base_url": b.url + "/v1"},
                        # A's sim again, behind a bulkhead of two places and a line of two (test_bulkheads)
                        {"name": "c", "base_url": a.url + "/v1", "read_timeout": 2.5,
                         "max_in_flight": 2, "max_queue": 2, "queue_timeout": 1}],
        models=[{"name": "model-a", "upstream": "a", "upstream_model": "sim-small"},
                {"name": "model-b", "upstream": "b", "upstream_model": "sim-small"},
                {"name": "model-c", "upstream": "c", "upstream_model": "sim-small"}],
        identities=[{"name": "caller", "owner": "o", "models": ["*"]}],
        extra={"data_plane": {"shutdown_timeout": 1}},
    )
    return g, a, b


@dataclass
class Outcome:
    unloaded: list[float] = field(default_factory=list)  # B's p99 (ms) per round, A idle
    loaded: list[float] = field(default_factory=list)  # B's p99 (ms) per round, A stalled with its line full
    b_failed: list[int] = field(default_factory=list)  # statuses of B's requests that were not 200
    overflow: list[tuple[float, int, str | None, Any]] = field(default_factory=list)  # (s, status, Retry-After, body)
    in_flight: float = -1.0
    messages: tuple[int, str | None, Any] = (0, None, None)
    responses: tuple[int, str | None, Any] = (0, None, None)


def chat(model: str) -> dict:
    return {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hello there"}]}


async def _b_round(s: aiohttp.ClientSession, g: Gateway, n: int, concurrency: int, out: Outcome) -> float:
    """One round of ``n`` requests to B, ``concurrency`` in flight; its p99 in ms."""
    lat: list[float] = []
    headers = {"Authorization": f"Bearer {g.keys['caller']}"}

    async def worker() -> None:
        for _ in range(n // concurrency):
            t0 = time.perf_counter()
            async with s.post(g.v1 + "/chat/completions", json=chat("model-b"), headers=headers) as r:
                await r.read()
                if r.status != 200:
                    out.b_failed.append(r.status)
            lat.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    lat.sort()
    return lat[max(0, round(len(lat) * 0.99) - 1)]


def gauge(g: Gateway, name: str, upstream: str) -> float:
    text = httpx.get(g.admin_url + "/metrics", timeout=10).text
    m = re.search(rf'^{name}\{{upstream="{upstream}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else -1.0


async def stall_and_measure(g: Gateway, a: Sim, *, rounds: int, per_round: int, concurrency: int = 4) -> Outcome:
    out = Outcome()
    headers = {"Authorization": f"Bearer {g.keys['caller']}"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as flood, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as bs:
        await _b_round(bs, g, per_round, concurrency, out)  # warm: connections, caches
        out.unloaded = [await _b_round(bs, g, per_round, concurrency, out) for _ in range(rounds)]

        a.faults(hang=True)

        async def one_a() -> None:
            t0 = time.perf_counter()
            async with flood.post(g.v1 + "/chat/completions", json=chat("model-a"), headers=headers,
                                  timeout=aiohttp.ClientTimeout(total=300)) as r:
                body = await r.json()
                out.overflow.append((time.perf_counter() - t0, r.status, r.headers.get("Retry-After"), body))

        tasks = [asyncio.create_task(one_a()) for _ in range(IN_FLIGHT + QUEUE + OVERFLOW)]
        deadline = time.monotonic() + 45  # 600 requests read and placed: a few seconds even on a loaded machine
        while len(out.overflow) < OVERFLOW or gauge(g, "sluice_upstream_queued", "a") < QUEUE:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        out.in_flight = gauge(g, "sluice_upstream_in_flight", "a")
        out.loaded = [await _b_round(bs, g, per_round, concurrency, out) for _ in range(rounds)]

        async with bs.post(g.v1 + "/messages", headers={**headers, "anthropic-version": "2023-06-01"},
                           json=chat("model-a")) as r:
            out.messages = (r.status, r.headers.get("retry-after"), await r.json())
        async with bs.post(g.v1 + "/responses", headers=headers,
                           json={"model": "model-a", "input": "hello", "max_output_tokens": 8}) as r:
            out.responses = (r.status, r.headers.get("Retry-After"), await r.json())
        out.overflow = list(out.overflow)  # what A answered while its line was full
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    a.clear_faults()
    return out
