"""A Postgres outage, end to end with real processes: the gateway reaches its database through
a TCP proxy the test cuts and restores. The data plane keeps serving from memory at normal
latency, readiness turns red fast without hanging, the control plane answers an OpenAI-shaped
503 instead of hanging, and once the database is back every usage record made during the
outage is written."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from pg_databases import PG_ADMIN, drop_pg_database, fresh_pg_database
from support import Gateway, Sim, start_gateway
from tcp_proxy import TcpProxy

_PG = urlsplit(PG_ADMIN)
PG_HOST, PG_PORT = _PG.hostname or "127.0.0.1", _PG.port or 5432  # what the proxy forwards to
CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "say something"}], "max_tokens": 4}


def pg(coro_fn, *args):
    """Run one asyncpg job from a sync test (no loop is running in this thread)."""
    return asyncio.run(coro_fn(*args))


async def _create_database() -> str:
    return (await fresh_pg_database()).rsplit("/", 1)[1]


async def _drop_database(name: str) -> None:
    await drop_pg_database(PG_ADMIN.rsplit("/", 1)[0] + "/" + name)


async def _count_ok_usage(name: str) -> int:
    conn = await asyncpg.connect(PG_ADMIN.rsplit("/", 1)[0] + "/" + name, timeout=5)
    try:
        return await conn.fetchval("SELECT count(*) FROM usage WHERE status = 200")
    finally:
        await conn.close()


class Rig:
    def __init__(self, gateway: Gateway, proxy: TcpProxy, database: str) -> None:
        self.gw, self.proxy, self.database = gateway, proxy, database
        self.key = gateway.keys["app"]
        self.served = 0  # chat completions answered 200, all of which must reach the ledger

    def chat(self) -> None:
        """One chat completion on the data plane: 200 within normal latency."""
        t0 = time.monotonic()
        r = self.gw.post("/v1/chat/completions", self.key, json=CHAT)
        took = time.monotonic() - t0
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
        assert took < 1.0, f"a chat completion took {took:.2f}s while the database was down"
        self.served += 1

    def ready(self) -> tuple[int, float]:
        t0 = time.monotonic()
        r = httpx.get(self.gw.admin_url + "/readyz", timeout=5)
        return r.status_code, time.monotonic() - t0

    def usage_rows(self) -> int:
        return pg(_count_ok_usage, self.database)


@pytest.fixture()
def rig(sim: Sim, tmp_path: Path) -> Iterator[Rig]:
    database = pg(_create_database)
    proxy = TcpProxy((PG_HOST, PG_PORT))
    proxy.start()
    gateway = None
    try:
        gateway = start_gateway(
            tmp_path,
            upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5, "total_timeout": 20}],
            models=[{"name": "sim-small", "upstream": "sim"}],
            identities=[{"name": "app", "owner": "team-a@example.com", "environment": "dev", "models": ["sim-small"]}],
            extra={"store": {"url": f"postgresql://postgres@127.0.0.1:{proxy.port}/{database}"}},
        )
        yield Rig(gateway, proxy, database)
    finally:
        proxy.start()  # let the gateway flush and exit cleanly
        if gateway is not None:
            gateway.stop()
        proxy.close()
        pg(_drop_database, database)


def wait_for_ready(rig: Rig, want: int, within: float) -> float:
    """Poll /readyz until it answers ``want``; every answer must come quickly. Seconds it took."""
    t_start = time.monotonic()
    seen = []
    while time.monotonic() - t_start < within:
        status, took = rig.ready()
        assert took < 2.5, f"/readyz took {took:.2f}s: it must answer quickly, never hang"
        seen.append(status)
        if status == want:
            return time.monotonic() - t_start
        time.sleep(0.1)
    raise AssertionError(f"/readyz did not answer {want} within {within}s; saw {seen[-5:]}\n{rig.gw.log()[-3000:]}")


def assert_admin_call_is_a_fast_openai_shaped_503(rig: Rig, within: float) -> None:
    t0 = time.monotonic()
    r = rig.gw.admin("GET", "/admin/identities")
    took = time.monotonic() - t0
    assert took < within, f"GET /admin/identities took {took:.2f}s with the database down"
    assert 500 <= r.status_code < 600, r.text
    err = r.json()["error"]
    assert isinstance(err, dict) and {"message", "type", "code"} <= err.keys(), r.text
    assert r.status_code == 503, f"wanted 503 for a store outage, got {r.status_code}: {r.text}"
    assert "Retry-After" in r.headers, "a 503 carries Retry-After"


def outage_then_recovery(rig: Rig, rows_before: int, admin_within: float) -> None:
    """The checks common to every kind of outage, from its first moment to full recovery."""
    t_cut = time.monotonic()
    for _ in range(5):
        rig.chat()  # keys are in memory: the data plane does not need the database
    wait_for_ready(rig, 503, within=5.0 - (time.monotonic() - t_cut))
    assert httpx.get(rig.gw.admin_url + "/healthz", timeout=5).status_code == 200
    assert httpx.get(rig.gw.url + "/healthz", timeout=5).status_code == 200

    assert_admin_call_is_a_fast_openai_shaped_503(rig, within=admin_within)
    for _ in range(10):
        rig.chat()  # still serving after the gateway has seen the store fail
    assert rig.ready()[0] == 503
    # the database itself is up: nothing reached it, so the records are waiting in the gateway
    assert rig.usage_rows() == rows_before, "usage was written although the gateway's path was cut"

    rig.proxy.start()
    wait_for_ready(rig, 200, within=10.0)
    assert rig.gw.admin("GET", "/admin/identities").status_code == 200

    deadline = time.monotonic() + 10
    while rig.usage_rows() < rig.served and time.monotonic() < deadline:
        time.sleep(0.2)
    # reading usage flushes what the gateway still holds: nothing more is on its way after this
    assert rig.gw.admin("GET", "/admin/usage?limit=1").status_code == 200
    assert rig.usage_rows() == rig.served, "usage recorded during the outage was lost or written twice"


def baseline(rig: Rig) -> int:
    """The gateway is healthy and writing to the database through the proxy; rows so far."""
    assert rig.ready()[0] == 200
    rig.chat()
    deadline = time.monotonic() + 5
    while rig.usage_rows() < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    rows = rig.usage_rows()
    assert rows == rig.served == 1, "the first request's usage never reached the database"
    return rows


def test_a_refused_database_keeps_the_data_plane_serving_turns_readiness_red_and_loses_no_usage(rig: Rig) -> None:
    rows = baseline(rig)
    rig.proxy.stop()
    outage_then_recovery(rig, rows, admin_within=6.0)


def test_a_silent_database_is_bounded_in_time_everywhere_and_loses_no_usage(rig: Rig) -> None:
    """Connections that are accepted but never answered (a black hole) must not hang anything either."""
    rows = baseline(rig)
    rig.proxy.blackhole()
    outage_then_recovery(rig, rows, admin_within=6.5)
