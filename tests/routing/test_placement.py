"""Placement across replicas: least outstanding, prefix affinity within a load bound, forgetting
a replica, hashing the whole conversation, and what a decision costs."""

from __future__ import annotations

import statistics
import time

import msgspec
import pytest

from sluice.core.wire import Message
from sluice.routing.placement import (
    Deployment,
    LeastOutstanding,
    PlacementSettings,
    PrefixAffinity,
    Replica,
    RoundRobin,
    build_placement,
    conversation_text,
)


def replicas(n: int = 4) -> list[Replica]:
    return [Replica(f"r{i}", f"http://127.0.0.1:{9000 + i}") for i in range(n)]


def system_prompt(group: int, chars: int = 2000) -> str:
    """A long shared prefix, different from the first character for every group."""
    words = " ".join(f"g{group}w{i}" for i in range(chars))
    return words[:chars]


def conversation(group: int, question: int) -> list[dict[str, str]]:
    return [{"role": "system", "content": system_prompt(group)},
            {"role": "user", "content": f"question {question}: " + "why " * 60}]


def affinity(**kw: object) -> PrefixAffinity:
    return PrefixAffinity(PlacementSettings(policy="prefix_affinity", **kw), seed="sim-small")  # type: ignore[arg-type]


def test_requests_sharing_a_prefix_land_on_the_replica_that_got_it_first() -> None:
    placement, rs = affinity(), replicas()
    homes: dict[int, set[str]] = {}
    for question in range(10):
        for group in range(8):
            r = placement.pick(rs, conversation(group, question))
            homes.setdefault(group, set()).add(r.name)
            placement.done(r)
    assert all(len(names) == 1 for names in homes.values())
    # The groups' first requests were placed by load, so the groups spread over the replicas.
    assert len({next(iter(n)) for n in homes.values()}) == 4


@pytest.mark.parametrize("policy", [LeastOutstanding(), affinity()], ids=["least_outstanding", "prefix_affinity"])
def test_a_burst_with_tied_scores_spreads_evenly_because_a_pick_counts_in_flight_at_once(policy: LeastOutstanding) -> None:
    rs = replicas()
    for i in range(40):
        policy.pick(rs, f"short prompt {i}")
    assert [r.in_flight for r in rs] == [10, 10, 10, 10]
    for r in rs:
        policy.done(r)
    assert [r.in_flight for r in rs] == [9, 9, 9, 9]


def test_affinity_never_loads_a_replica_beyond_the_slack_over_the_least_loaded() -> None:
    placement, rs = affinity(balance_abs=4, balance_rel=1.25), replicas()
    for _ in range(200):
        # One hot prefix and nothing finishing: affinity alone would put all of it on one replica.
        placement.pick(rs, conversation(0, 0))
        loads = [r.in_flight for r in rs]
        least = min(loads)
        assert max(loads) <= least + max(4, 0.25 * least) + 1
    assert min(r.in_flight for r in rs) >= 40


def test_forgetting_a_replica_drops_its_prefixes_so_they_move_and_stay_elsewhere() -> None:
    placement, rs = affinity(), replicas()
    home = placement.pick(rs, conversation(3, 0))
    placement.done(home)
    assert placement.indexed_blocks(home) > 0
    placement.forget(home)  # it restarted with an empty cache, or failed its health check
    assert placement.indexed_blocks(home) == 0
    others = [r for r in rs if r is not home]
    moved = placement.pick(others, conversation(3, 1))
    placement.done(moved)
    # Back in the pool, the forgotten replica no longer attracts the group: the new home keeps it.
    for q in range(2, 6):
        r = placement.pick(rs, conversation(3, q))
        placement.done(r)
        assert r is moved


def test_the_whole_conversation_is_hashed_not_only_the_first_message() -> None:
    placement = affinity()
    base = conversation(1, 0)
    longer = [*base, {"role": "assistant", "content": "because " * 40}, {"role": "user", "content": "and then? " * 40}]
    other_turns = [base[0], {"role": "user", "content": "something else entirely " * 10}]
    h_base, h_longer, h_other = (placement.block_hashes(c) for c in (base, longer, other_turns))
    # A follow-up turn extends the chain; a different turn after the same system prompt forks it.
    assert h_longer[: len(h_base)] == h_base and len(h_longer) > len(h_base)
    shared = len(conversation_text(base[:1])) // 64
    assert h_other[:shared] == h_base[:shared] and h_other[shared + 1] != h_base[shared + 1]


def test_the_same_text_for_another_model_shares_no_blocks() -> None:
    text = system_prompt(0)
    a = PrefixAffinity(seed="model-a").block_hashes(text)
    b = PrefixAffinity(seed="model-b").block_hashes(text)
    assert len(a) == len(b) == 31 and not set(a) & set(b)


def test_the_per_replica_index_is_bounded_and_evicts_the_least_recent_prefixes() -> None:
    placement, (only,) = affinity(index_blocks=40), replicas(1)
    for group in range(5):
        placement.done(placement.pick([only], system_prompt(group)))
    assert placement.indexed_blocks(only) == 40


def test_settings_choose_the_policy() -> None:
    assert type(build_placement(None)) is LeastOutstanding
    assert type(build_placement(PlacementSettings(policy="prefix_affinity"), "m")) is PrefixAffinity
    assert type(build_placement(PlacementSettings(policy="round_robin"), "m")) is RoundRobin


def test_round_robin_takes_turns_whatever_the_load() -> None:
    rs = replicas(3)
    rs[0].in_flight = 50
    policy = RoundRobin()
    assert [policy.pick(rs).name for _ in range(6)] == ["r0", "r1", "r2", "r0", "r1", "r2"]


def test_with_no_shared_prefix_affinity_places_exactly_as_least_outstanding() -> None:
    """The no-prefix workload's latency is least outstanding's by construction: the same decisions."""
    a, b = replicas(), replicas()
    lo, pa = LeastOutstanding(), affinity(index_blocks=50)
    held_a: list[Replica] = []
    held_b: list[Replica] = []
    for i in range(400):
        prompt = [{"role": "user", "content": f"unique {i} " + "x" * 300}]
        ra, rb = lo.pick(a, prompt), pa.pick(b, prompt)
        assert ra.name == rb.name, i
        held_a.append(ra)
        held_b.append(rb)
        if i % 3 == 0:  # requests end out of order, leaving uneven loads
            lo.done(held_a.pop(i % len(held_a)))
            pa.done(held_b.pop(i % len(held_b)))


def test_a_deployment_leaves_out_an_ejected_replica_and_forgets_what_it_held() -> None:
    rs = replicas(3)
    d = Deployment("pool", rs, affinity())
    home = d.placement.pick(d.live, conversation(0, 0))
    d.placement.done(home)
    d.eject(home)
    assert home not in d.live and len(d.live) == 2
    assert d.placement.indexed_blocks(home) == 0  # type: ignore[attr-defined]
    for r in d.live:
        d.eject(r)
    assert d.live == tuple(rs)  # never none: a deployment that is all down is the breakers' to handle
    d.restore(home)
    assert d.live == (home,)


def test_a_decision_on_an_8000_character_prompt_costs_well_under_a_millisecond() -> None:
    placement, rs = affinity(), replicas()
    prompts = [[{"role": "system", "content": system_prompt(g, 6000)}, {"role": "user", "content": "q " * 1000}]
               for g in range(32)]
    assert all(len(conversation_text(p)) >= 8000 for p in prompts)
    for p in prompts:  # warm the index so decisions walk long matches
        placement.done(placement.pick(rs, p))
    samples = []
    for i in range(2000):
        start = time.perf_counter()
        r = placement.pick(rs, prompts[i % 32])
        samples.append(time.perf_counter() - start)
        placement.done(r)
    # The target is 0.1 ms median (about 0.05 ms measured on an idle core); the bound is 3x
    # that because five other test runs share this machine's two cores.
    assert statistics.median(samples) < 0.0003


def test_decoded_wire_messages_place_like_the_json_they_came_from() -> None:
    raw = [*conversation(2, 1), {"role": "user", "content": [{"type": "text", "text": "a part " * 20}]}]
    decoded = msgspec.convert(raw, list[Message])
    placement = affinity()
    assert placement.block_hashes(decoded) == placement.block_hashes(raw)
    assert len(placement.block_hashes(decoded)) == len(conversation_text(raw)) // 64
    assert "a part" in conversation_text(decoded)


def test_engine_block_events_feed_the_precise_index_and_evictions_unfeed_it() -> None:
    """llm-d's precise mode: the engine's own block hashes for a prompt, learned from its KV events."""
    keys = {"a": [11, 12, 13], "b": [21, 22]}
    placement = PrefixAffinity(seed="m", block_keys=lambda prompt: keys[prompt])
    rs = replicas(3)
    placement.stored(rs[2], [11, 12, 13])  # a BlockStored event from replica 2
    r = placement.pick(rs, "a")
    placement.done(r)
    assert r is rs[2]
    placement.removed(rs[2], [11, 12, 13])  # BlockRemoved: the engine evicted them
    assert placement.indexed_blocks(rs[2]) == 0
    rs[2].in_flight = 5  # so that, with no match left, load decides
    assert placement.pick(rs, "a") is not rs[2]
