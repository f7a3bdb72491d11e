"""Three replicas on one Postgres and one Redis behave as one gateway: every limit type is exact
across them and usage rows equal the sim's request count; restarted one by one under load behind a
load balancer that follows /readyz, no request fails and no usage is lost."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from balancer import Balancer
from pg_databases import drop_pg_database, fresh_pg_database
from rig import Load, burst, poll, redis_prefix
from sluice.identity import generate
from support import Sim, start_gateway

EXACT = "abc.abc.abc."  # 7 prompt tokens for the sim and for sluice's estimate
RULES = [
    {"name": "rpm", "match": {"model": "m-rpm"}, "requests_per_minute": 12},
    {"name": "tin", "match": {"model": "m-in"}, "input_tokens_per_minute": 70},
    {"name": "tout", "match": {"model": "m-out"}, "output_tokens_per_minute": 100},
    {"name": "conc", "match": {"model": "m-conc"}, "concurrent_requests": 3},
    {"name": "spend", "match": {"model": "m-spend"}, "spend_per_day": 0.0001},
]
MODELS = ["sim-small", "m-rpm", "m-in", "m-out", "m-conc", "m-spend"]


async def _usage_rows(url: str) -> int:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        return await conn.fetchval("SELECT count(*) FROM usage WHERE status = 200")
    finally:
        await conn.close()


class Fleet:
    def __init__(self, tmp, n: int = 3, grace: float = 1.0) -> None:
        self.tmp, self.grace, self.gen = tmp, grace, 0
        self.sim = Sim(tmp)
        self.db = asyncio.run(fresh_pg_database())
        self.prefix = redis_prefix()
        self.key, self.admin_key = generate("dev"), generate("prod", kind="admin")
        self.gws = []
        for _ in range(n):
            self.gws.append(self.start())

    def start(self, port: int | None = None):
        self.gen += 1
        d = self.tmp / f"r{self.gen}"
        d.mkdir()
        return start_gateway(
            d, port=port, admin_key=self.admin_key,
            upstreams=[{"name": "sim", "base_url": self.sim.url + "/v1"}],
            models=[{"name": m, "upstream": "sim", "upstream_model": "sim-small"} for m in MODELS],
            identities=[{"name": "app", "owner": "o", "models": ["*"], "keys": [self.key]}],
            extra={"store": {"url": self.db}, "lifecycle": {"ready_grace_s": self.grace},
                   # input free, output a millionth of a unit per token: 100 output tokens = 0.0001
                   "prices": {m: {"input": 0, "output": 1} for m in MODELS},
                   "limits": {"backend": "redis", "key_prefix": self.prefix, "redis_timeout_s": 5,
                              "rules": RULES}})

    def urls(self) -> list[str]:
        return [g.url for g in self.gws]

    def close(self) -> None:
        for g in self.gws:
            g.stop()
        self.sim.stop()
        asyncio.run(drop_pg_database(self.db))


@pytest.fixture()
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.close()


def _statuses(fleet: Fleet, model: str, n: int, content: str = "x", max_tokens: int = 10) -> list[int]:
    body = {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": content}]}
    return [r.status_code for r in asyncio.run(burst(fleet.urls(), fleet.key, n, body))]


@pytest.mark.timeout(600)
def test_every_limit_type_is_exact_across_three_replicas_and_usage_matches_the_sim(fleet):
    got = _statuses(fleet, "m-rpm", 30)
    assert got.count(200) == 12 and got.count(429) == 18, got
    got = _statuses(fleet, "m-in", 30, content=EXACT)
    assert got.count(200) == 10 and got.count(429) == 20, got
    before = fleet.sim.stats()["completion_tokens"]
    got = _statuses(fleet, "m-out", 30)
    assert got.count(200) == 10 and got.count(429) == 20, got
    assert fleet.sim.stats()["completion_tokens"] - before == 100
    got = _statuses(fleet, "m-spend", 30)
    assert got.count(200) == 10 and got.count(429) == 20, got
    fleet.sim.faults(delay_ms=700)
    try:
        got = _statuses(fleet, "m-conc", 12, max_tokens=2)
    finally:
        fleet.sim.clear_faults()
    assert got.count(200) == 3 and got.count(429) == 9, got
    served = fleet.sim.stats()["chat_requests"]
    assert served == 12 + 10 + 10 + 10 + 3
    poll(lambda: asyncio.run(_usage_rows(fleet.db)) == served, 20,
         f"usage rows {asyncio.run(_usage_rows(fleet.db))} != sim's {served}")


@pytest.mark.timeout(600)
def test_a_rolling_restart_of_three_replicas_under_load_fails_nothing_and_loses_no_usage(fleet):
    lb = Balancer([g.port for g in fleet.gws])
    poll(lambda: all(lb.ready.values()), 20, "the balancer never saw all three ready")
    load = Load(lb.url, fleet.key, threads=6)
    try:
        poll(lambda: load.ok > 30, 30, "no load through the balancer")
        for i, old in enumerate(list(fleet.gws)):
            before = load.ok
            assert old.stop() == 0  # SIGTERM: /readyz 503 first, drain, flush usage, exit
            fleet.gws[i] = fleet.start(port=old.port)
            poll(lambda: lb.ready[old.port], 30, "the restarted replica never became ready")
            poll(lambda: load.ok > before + 30, 30, "load stalled during the restart")
        time.sleep(0.5)
    finally:
        load.stop()
        stuck = lb.stuck()
        lb.close()
    assert not load.failed, f"{len(load.failed)} failed requests, e.g. {load.failed[:3]}; stuck relays: {stuck}; balancer: {[e for e in lb.events if not e.startswith('connect')][-10:]}"
    served = fleet.sim.stats()["chat_requests"]
    assert served == load.ok
    poll(lambda: asyncio.run(_usage_rows(fleet.db)) == served, 20,
         f"usage rows {asyncio.run(_usage_rows(fleet.db))} != sim's {served} (clients saw {load.ok})")
