"""KV block events in vLLM's shape: stored runs chained by parent hash, evictions, cache clears."""

from __future__ import annotations

import msgspec
from sim_harness import StartSim, long_prompt, user

from sluice.sim.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, EventLog, SequencedBatch
from sluice.sim.prefix_cache import PrefixCache, stable_block_hash

_batches = msgspec.json.Decoder(list[SequencedBatch])


def toks(n: int, prefix: str = "t") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_stored_events_chain_each_new_run_to_the_cached_block_before_it() -> None:
    log = EventLog()
    cache = PrefixCache(capacity_blocks=100, block_tokens=4, events=log)
    cache.lookup_and_insert(toks(9))  # two full blocks before the last token
    cache.lookup_and_insert([*toks(8), "x0", "x1", "x2", "x3", "end"])  # shares two blocks, adds one
    (first,), (second,) = (b.batch.events for b in log.after(-1))
    assert isinstance(first, BlockStored) and isinstance(second, BlockStored)
    assert first.parent_block_hash is None and first.block_size == 4 and len(first.token_ids) == 8
    h0 = stable_block_hash(0, toks(4))
    assert first.block_hashes == [h0, stable_block_hash(h0, toks(8)[4:])]
    assert second.parent_block_hash == first.block_hashes[1] and len(second.block_hashes) == 1
    assert len(second.token_ids) == 4


def test_evictions_are_published_as_removed_blocks_and_a_reset_as_all_cleared() -> None:
    log = EventLog()
    cache = PrefixCache(capacity_blocks=2, block_tokens=2, events=log)
    cache.lookup_and_insert(["a", "b", "c", "d", "end"])
    cache.lookup_and_insert(["e", "f", "end"])
    cache.clear()
    stored, evicting, cleared = (b.batch.events for b in log.after(-1))
    assert isinstance(evicting[0], BlockRemoved) and evicting[0].block_hashes == [stored[0].block_hashes[0]]
    assert isinstance(cleared[0], AllBlocksCleared)
    assert [b.seq for b in log.after(0)] == [1, 2]


async def test_the_sim_serves_its_events_over_http_in_vllm_wire_shape(start_sim: StartSim) -> None:
    sim = await start_sim(kv_events=True, block_tokens=16)
    await sim.client().chat.completions.create(model="sim-small", messages=user(long_prompt(99)), max_tokens=1)
    body = (await sim.http.get("/sim/kv_events", params={"after": -1})).json()
    assert body["next_seq"] == 1
    # vLLM's structs are tagged and array-like: ["BlockStored", hashes, parent, token_ids, block_size, ...].
    event = body["batches"][0]["batch"][1][0]
    assert event[0] == "BlockStored" and len(event[1]) == 6 and event[2] is None and event[4] == 16
    assert _batches.decode(msgspec.json.encode(body["batches"]))[0].batch.events[0].block_hashes == event[1]
    assert (await sim.http.post("/reset_prefix_cache")).status_code == 200
    after = (await sim.http.get("/sim/kv_events", params={"after": 0})).json()["batches"]
    assert after[0]["batch"][1] == [["AllBlocksCleared"]]


async def test_kv_events_are_not_found_unless_enabled(start_sim: StartSim) -> None:
    sim = await start_sim()
    resp = await sim.http.get("/sim/kv_events")
    assert resp.status_code == 404 and resp.json()["message"].startswith("KV events are off")  # vLLM's error shape
