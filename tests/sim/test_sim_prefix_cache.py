"""The per-replica prefix KV cache: chained block hashes, LRU bound, and its effect on TTFT."""

from __future__ import annotations

import time

from sim_harness import StartSim, long_prompt, user

from sluice.sim.prefix_cache import PrefixCache


def toks(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_a_repeated_prompt_hits_every_full_block_before_its_last_token() -> None:
    cache = PrefixCache(capacity_blocks=100, block_tokens=4)
    assert cache.lookup_and_insert(toks(10)) == 0
    assert cache.lookup_and_insert(toks(10)) == 8
    # The last token is always computed, so an exact multiple of the block keeps one block back.
    assert cache.lookup_and_insert(toks(8)) == 4


def test_a_shared_prefix_hits_only_up_to_where_prompts_diverge() -> None:
    cache = PrefixCache(capacity_blocks=100, block_tokens=4)
    cache.lookup_and_insert(toks(12))
    assert cache.lookup_and_insert([*toks(6), "different", *toks(12)[7:], "end"]) == 4


def test_an_equal_block_after_a_different_prefix_is_a_miss() -> None:
    cache = PrefixCache(capacity_blocks=100, block_tokens=2)
    cache.lookup_and_insert(["a", "b", "c", "d", "z"])
    assert cache.lookup_and_insert(["x", "y", "c", "d", "z"]) == 0


def test_least_recently_used_blocks_are_evicted_at_capacity() -> None:
    cache = PrefixCache(capacity_blocks=2, block_tokens=2)
    cache.lookup_and_insert(["a", "b", "end"])
    cache.lookup_and_insert(["c", "d", "end"])
    cache.lookup_and_insert(["a", "b", "end"])  # touches a-b, so c-d is now the oldest
    cache.lookup_and_insert(["e", "f", "end"])
    assert len(cache) == 2
    assert cache.lookup_and_insert(["a", "b", "end"]) == 2
    assert cache.lookup_and_insert(["c", "d", "end"]) == 0


def test_zero_capacity_disables_caching() -> None:
    cache = PrefixCache(capacity_blocks=0, block_tokens=2)
    cache.lookup_and_insert(toks(9))
    assert cache.lookup_and_insert(toks(9)) == 0


async def test_second_identical_long_prompt_is_cached_and_starts_sooner(start_sim: StartSim) -> None:
    sim = await start_sim(prefill_ms_per_token=2.0, block_tokens=16)
    client = sim.client()
    messages = user(long_prompt(399))  # 400 prompt tokens with the role

    async def ttft_and_usage() -> tuple[float, int, int]:
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model="sim-small", messages=messages, max_tokens=2, stream=True, stream_options={"include_usage": True}
        )
        first = 0.0
        usage = None
        async for chunk in stream:
            if not first and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
            usage = chunk.usage or usage
        assert usage is not None and usage.prompt_tokens_details is not None
        return first, usage.prompt_tokens, usage.prompt_tokens_details.cached_tokens or 0

    cold_ttft, prompt_tokens, cold_cached = await ttft_and_usage()
    warm_ttft, _, warm_cached = await ttft_and_usage()
    assert prompt_tokens == 400 and cold_cached == 0
    assert warm_cached == 384  # 24 full blocks of 16 before the last token
    # Cold prefill is 400 x 2 ms = 800 ms; warm is 16 x 2 ms = 32 ms. Compared as a ratio of the
    # cold run in the same test, with room for a loaded machine to add ~350 ms to the warm one.
    assert cold_ttft >= 0.79
    assert warm_ttft < 0.5 * cold_ttft, (warm_ttft, cold_ttft)
    stats = await sim.stats()
    assert stats["prefix_cache_lookups"] == 2 and stats["prefix_cache_hits"] == 1
    assert stats["prefix_cache_hit_tokens"] == 384


async def test_each_replica_has_its_own_cache_and_reset_empties_it(start_sim: StartSim) -> None:
    a, b = await start_sim(), await start_sim()
    messages = user(long_prompt(100))
    await a.client().chat.completions.create(model="sim-small", messages=messages, max_tokens=1)
    on_b = await b.client().chat.completions.create(model="sim-small", messages=messages, max_tokens=1)
    assert on_b.usage is not None and on_b.usage.prompt_tokens_details.cached_tokens == 0
    assert (await a.http.post("/reset_prefix_cache")).status_code == 200
    again = await a.client().chat.completions.create(model="sim-small", messages=messages, max_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens_details.cached_tokens == 0
