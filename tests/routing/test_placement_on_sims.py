"""Prefix affinity in front of real sim processes: the replica it picks is the one whose KV cache
already holds the prefix, which round-robin-like spreading does not achieve; through a gateway
too (the data path places by its upstream's ``placement``); and a replica that fails its health
checks is left out."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support import Sim, free_port, start_gateway

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


IDENTS = [{"name": "app", "owner": "o", "models": ["*"]}]


def through_gateway(tmp_path: Path, sims: list[Sim], policy: str) -> list[int]:
    """The same 4 groups x 6 questions, one at a time, through a gateway whose upstream has the sims as
    replicas and places by ``policy``; the cached tokens of each reply."""
    g = start_gateway(tmp_path, identities=IDENTS, models=[{"name": "m", "upstream": "pool", "upstream_model": "sim-small"}],
                      upstreams=[{"name": "pool", "base_url": sims[0].url + "/v1", "replicas": [s.url + "/v1" for s in sims[1:]],
                                  "placement": {"policy": policy}}])
    out = []
    try:
        for question in range(6):
            for group in range(4):
                r = g.post("/v1/chat/completions", g.keys["app"],
                           json={"model": "m", "messages": conversation(group, question), "max_tokens": 1})
                assert r.status_code == 200, r.text
                out.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
    finally:
        g.stop()
    assert sum(s.stats()["chat_requests"] for s in sims) == 24
    return out


def test_the_data_path_places_a_group_on_the_replica_that_holds_its_prefix(tmp_path: Path, sims: list[Sim]) -> None:
    cached = through_gateway(tmp_path, sims, "prefix_affinity")
    assert cached[:4] == [0, 0, 0, 0]
    assert all(c >= 400 for c in cached[4:]), cached


@pytest.mark.parametrize("policy", ["least_outstanding", "round_robin"])
def test_the_data_path_without_prefix_affinity_misses_the_cache(tmp_path: Path, sims: list[Sim], policy: str) -> None:
    cached = through_gateway(tmp_path, sims, policy)
    assert sum(1 for c in cached[4:] if c == 0) >= 4, cached


@pytest.mark.parametrize("client", ["aiohttp", "native"])
def test_a_replica_that_fails_its_health_checks_gets_no_request(tmp_path: Path, client: str) -> None:
    live = Sim(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    g = start_gateway(tmp_path, identities=IDENTS, models=[{"name": "m", "upstream": "pool", "upstream_model": "sim-small"}],
                      upstreams=[{"name": "pool", "base_url": dead, "replicas": [live.url + "/v1"], "client": client,
                                  "connect_timeout": 0.5}],
                      extra={"resilience": {"health_interval_s": 0.2}})
    try:
        deadline = time.monotonic() + 10
        while live.stats()["model_list_requests"] < 2 and time.monotonic() < deadline:
            time.sleep(0.1)  # a couple of health rounds
        codes = [g.post("/v1/chat/completions", g.keys["app"],
                        json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).status_code
                 for _ in range(6)]
        assert codes == [200] * 6  # least outstanding alone would send every other one to the dead replica
        assert live.stats()["chat_requests"] == 6
    finally:
        g.stop()
        live.stop()
