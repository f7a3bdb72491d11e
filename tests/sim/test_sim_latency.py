"""The latency model: base + prefill per uncached token, decode per token, bounded concurrency."""

from __future__ import annotations

import asyncio
import time

from sim_harness import RunningSim, StartSim, long_prompt, user

from sluice.core.config import Sim
from sluice.sim.latency import LatencyModel


def test_ttft_is_base_plus_prefill_per_uncached_token_and_decode_follows() -> None:
    model = LatencyModel(Sim(base_latency_ms=10, prefill_ms_per_token=0.5, decode_ms_per_token=2))
    assert abs(model.ttft(100) - 0.060) < 1e-9
    assert abs(model.total(100, 11) - (0.060 + 10 * 0.002)) < 1e-9


async def timed(sim: RunningSim, **kw: object) -> float:
    start = time.perf_counter()
    await sim.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1, **kw)
    return time.perf_counter() - start


async def test_non_streaming_latency_follows_the_model(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=50, prefill_ms_per_token=0.5, decode_ms_per_token=5)
    start = time.perf_counter()
    await sim.client().chat.completions.create(
        model="sim-small", messages=user(long_prompt(199)), max_tokens=21, extra_body={"ignore_eos": True}
    )
    elapsed = time.perf_counter() - start
    # 50 ms + 200 x 0.5 ms + 20 x 5 ms = 250 ms
    assert 0.24 <= elapsed < 0.5


async def test_max_concurrency_one_serialises_two_requests(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=250, max_concurrency=1)
    single = await timed(sim)
    both = await asyncio.gather(timed(sim), timed(sim))
    assert single >= 0.24
    # The second waits for the first: about twice one request's latency.
    assert max(both) >= 1.8 * 0.25 and max(both) < 2 * single + 0.25
    assert min(both) < 0.25 + 0.15


async def test_unbounded_concurrency_runs_requests_in_parallel(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=250)
    both = await asyncio.gather(timed(sim), timed(sim))
    assert max(both) < 0.25 * 1.6
