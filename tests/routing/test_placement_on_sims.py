"""Prefix affinity in front of real sim processes: the replica it picks is the one whose KV cache
already holds the prefix, which round-robin-like spreading does not achieve."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Sim

from sluice.routing.placement import LeastOutstanding, PrefixAffinity, Replica


@pytest.fixture
def sims(tmp_path: Path) -> Iterator[list[Sim]]:
    started = [Sim(tmp_path, **{"cache-blocks": 4096, "block-tokens": 16}) for _ in range(3)]
    yield started
    for s in started:
        s.stop()


def conversation(group: int, question: int) -> list[dict[str, str]]:
    system = " ".join(f"g{group}w{i}" for i in range(400))  # 401 tokens with the role
    return [{"role": "system", "content": system}, {"role": "user", "content": f"question {question} please"}]


def cached_tokens(policy: LeastOutstanding, sims: list[Sim]) -> list[int]:
    """Send 4 groups x 6 questions one at a time through ``policy``; the cached tokens of each reply."""
    replicas = [Replica(f"r{i}", s.url) for i, s in enumerate(sims)]
    out = []
    with httpx.Client(timeout=10) as client:
        for question in range(6):
            for group in range(4):
                messages = conversation(group, question)
                replica = policy.pick(replicas, messages)
                try:
                    body = client.post(replica.url + "/v1/chat/completions",
                                       json={"model": "sim-small", "messages": messages, "max_tokens": 1}).json()
                finally:
                    policy.done(replica)
                out.append(body["usage"]["prompt_tokens_details"]["cached_tokens"])
    return out


def test_after_its_first_request_every_request_of_a_group_finds_its_prefix_cached(sims: list[Sim]) -> None:
    cached = cached_tokens(PrefixAffinity(seed="sim-small"), sims)
    first_round, later = cached[:4], cached[4:]
    assert first_round == [0, 0, 0, 0]
    assert all(c >= 400 for c in later)  # the 25 full blocks of the system prompt, at least


def test_spreading_by_load_alone_misses_the_cache_more_often(sims: list[Sim]) -> None:
    cached = cached_tokens(LeastOutstanding(), sims)
    # With nothing in flight, ties rotate: 4 groups over 3 replicas land on a new replica often.
    assert sum(1 for c in cached[4:] if c == 0) >= 4
