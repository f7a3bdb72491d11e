"""Continuous batching and a prefill queue: decode slows with the batch, prefills wait their turn."""

from __future__ import annotations

import asyncio
import time

from sim_harness import RunningSim, StartSim, long_prompt, user

from sluice.core.config import Sim
from sluice.sim.latency import LatencyModel


def test_a_decode_step_slows_by_the_configured_share_per_other_sequence() -> None:
    model = LatencyModel(Sim(decode_ms_per_token=2, decode_batch_slowdown=0.25))
    model.decoding = 1
    assert abs(model.step_s() - 0.002) < 1e-12
    model.decoding = 5
    assert abs(model.step_s() - 0.002 * (1 + 0.25 * 4)) < 1e-12


async def warm(sim: RunningSim) -> None:
    """One request first, so the client's set-up and first connection are not in any measurement."""
    await stream_seconds(sim, "warm up", 1)


async def stream_seconds(sim: RunningSim, content: str, tokens: int, start: float = 0.0) -> tuple[float, float, int]:
    """Time to first content token, time to the end (from ``start``, default now), and cached prompt tokens."""
    start = start or time.perf_counter()
    stream = await sim.client().chat.completions.create(
        model="sim-small", messages=user(content), max_tokens=tokens, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )
    first = 0.0
    cached = -1
    async for chunk in stream:
        if not first and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - start
        if chunk.usage is not None and chunk.usage.prompt_tokens_details is not None:
            cached = chunk.usage.prompt_tokens_details.cached_tokens or 0
    return first, time.perf_counter() - start, cached


async def test_concurrent_streams_decode_slower_than_one_alone(start_sim: StartSim) -> None:
    sim = await start_sim(decode_ms_per_token=5, decode_batch_slowdown=0.5)
    await warm(sim)
    # 60 tokens x 5 ms = 0.3 s alone; four together take (1 + 0.5 x 3) = 2.5x as long per step.
    first, end, _ = await stream_seconds(sim, "alone", 60)
    alone = end - first
    together = await asyncio.gather(*(stream_seconds(sim, f"batch {i}", 60) for i in range(4)))
    # Decode time (first token to last) against the baseline of the same run, so a loaded machine slows both.
    assert min(e - f for f, e, _ in together) > 1.8 * alone
    assert (await sim.stats())["decoding"] == 0


async def test_without_batch_slowdown_concurrent_streams_decode_at_full_speed(start_sim: StartSim) -> None:
    sim = await start_sim(decode_ms_per_token=5)
    await warm(sim)
    first, end, _ = await stream_seconds(sim, "alone", 60)
    alone = end - first
    together = await asyncio.gather(*(stream_seconds(sim, f"batch {i}", 60) for i in range(4)))
    # Generous: the four streams share one event loop on a loaded machine.
    assert max(e - f for f, e, _ in together) < 1.6 * alone + 0.1


async def test_prefills_queue_one_at_a_time_when_prefill_concurrency_is_one(start_sim: StartSim) -> None:
    sim = await start_sim(prefill_ms_per_token=0.5, prefill_concurrency=1)
    await warm(sim)
    # Different prompts of 400 tokens: 200 ms of prefill each, so the second starts after the first
    # and its first token comes no sooner than 400 ms after both were sent.
    t0 = time.perf_counter()
    a, b = await asyncio.gather(stream_seconds(sim, long_prompt(399), 2, t0),
                                stream_seconds(sim, "other " + long_prompt(398), 2, t0))
    first, second = sorted([a[0], b[0]])
    assert first >= 0.19 and second >= 0.39


async def test_a_prompt_queued_behind_its_own_prefix_finds_it_cached(start_sim: StartSim) -> None:
    sim = await start_sim(prefill_ms_per_token=0.5, prefill_concurrency=1, block_tokens=16)
    await warm(sim)
    a, b = await asyncio.gather(stream_seconds(sim, long_prompt(399), 2), stream_seconds(sim, long_prompt(399), 2))
    # The first computes 400 tokens; the second waits for it, then reuses its 24 full blocks.
    assert sorted([a[2], b[2]]) == [0, 384]
    assert max(a[0], b[0]) < min(a[0], b[0]) + 0.12
