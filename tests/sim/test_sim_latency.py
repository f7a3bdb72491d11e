"""The latency model: base + prefill per uncached token, decode per token, bounded concurrency."""

from __future__ import annotations

import asyncio
import time

from sim_harness import RunningSim, StartSim, user

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


# A loaded machine only ever adds time (a sleep never returns early), so every lower bound
# below holds as written, and upper bounds compare against a baseline taken in the same test
# (or the fastest of a few runs), never against a fixed wall-clock figure alone.


async def test_non_streaming_latency_follows_the_model(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=50, prefill_ms_per_token=0.5, decode_ms_per_token=5)
    runs = []
    for run in range(3):
        prompt = " ".join(f"r{run}w{i}" for i in range(199))  # a new prompt each run: no prefix-cache hits
        start = time.perf_counter()
        await sim.client().chat.completions.create(
            model="sim-small", messages=user(prompt), max_tokens=21, extra_body={"ignore_eos": True}
        )
        runs.append(time.perf_counter() - start)
    # 50 ms + 200 x 0.5 ms + 20 x 5 ms = 250 ms: every run takes at least that, and the fastest
    # (the one least disturbed by other work) not much more; a missing or doubled term is 100 ms off.
    assert min(runs) >= 0.24
    assert min(runs) < 0.25 + 0.09, runs


async def test_max_concurrency_one_serialises_two_requests(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=250, max_concurrency=1)
    single = min([await timed(sim), await timed(sim)])
    both = await asyncio.gather(timed(sim), timed(sim))
    assert single >= 0.24
    # The second waits for the first: about twice one request's latency.
    assert max(both) >= 1.8 * 0.25 and max(both) < 2 * single + 0.25
    assert min(both) < 1.5 * single  # the first of the two did not wait


async def test_unbounded_concurrency_runs_requests_in_parallel(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=250)
    single = min([await timed(sim), await timed(sim)])
    both = await asyncio.gather(timed(sim), timed(sim))
    assert min(both) >= 0.24
    # In parallel both finish in about one request's time; in series the second would take two.
    assert max(both) < 1.5 * single, (both, single)
