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
# below holds as written. Upper bounds are either the lower bound of the behaviour they rule
# out (two requests in series take at least twice one's sleep, however busy the machine) or
# are measured against a zero-latency baseline taken in the same test, with room for noise.


async def test_non_streaming_latency_follows_the_model(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=50, prefill_ms_per_token=1.0, decode_ms_per_token=20)
    bare = await start_sim()  # the same request with no modelled latency: this machine's overhead now
    runs, overhead = [], []
    for run in range(3):
        prompt = " ".join(f"r{run}w{i}" for i in range(199))  # a new prompt each run: no prefix-cache hits
        for target, out in ((bare, overhead), (sim, runs)):
            start = time.perf_counter()
            await target.client().chat.completions.create(
                model="sim-small", messages=user(prompt), max_tokens=21, extra_body={"ignore_eos": True}
            )
            out.append(time.perf_counter() - start)
    # 50 ms + 200 x 1 ms + 20 x 20 ms = 650 ms. Every run takes at least that; the fastest, less the
    # fastest overhead, not much more. A missing term is 200 ms short, a doubled one 200 ms over.
    assert min(runs) >= 0.64
    assert min(runs) - min(overhead) < 0.65 + 0.15, (runs, overhead)


async def test_max_concurrency_one_serialises_two_requests(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=500, max_concurrency=1)
    both = await asyncio.gather(timed(sim), timed(sim))
    # The second waits for the first: at least two requests' sleep; the first did not wait, so it
    # finished before a second request's sleep could have ended.
    assert max(both) >= 2 * 0.5 * 0.98
    assert min(both) < 2 * 0.5 * 0.9, both


async def test_unbounded_concurrency_runs_requests_in_parallel(start_sim: StartSim) -> None:
    sim = await start_sim(base_latency_ms=500)
    both = await asyncio.gather(timed(sim), timed(sim))
    assert min(both) >= 0.49
    # In series the second could not finish before two sleeps (1 s); in parallel both end near 0.5 s.
    assert max(both) < 2 * 0.5 * 0.9, both
