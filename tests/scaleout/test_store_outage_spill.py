"""Postgres cut under load (through a proxy the test cuts): known identities keep being served,
usage past the in-memory bound spills to a local file, and once the store is back every record
is written exactly once, counted against the sim; a replica stopped during the outage leaves its
records in the spill file and the next one on that directory writes them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from pg_databases import PG_ADMIN, drop_pg_database, fresh_pg_database
from rig import CHAT, Load, poll
from support import Sim, start_gateway
from tcp_proxy import TcpProxy

_PG = urlsplit(PG_ADMIN)
OUTAGE_S = 30.0  # as the issue asks; the bound (spill_after: 20) is passed within the first seconds


async def _usage(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url, timeout=5)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM usage WHERE status = 200")
        return row["n"], row["d"]
    finally:
        await conn.close()


@pytest.fixture()
def outage(tmp_path: Path):
    url = asyncio.run(fresh_pg_database())
    name = url.rsplit("/", 1)[1]
    proxy = TcpProxy((_PG.hostname or "127.0.0.1", _PG.port or 5432))
    proxy.start()
    sim = Sim(tmp_path)
    yield tmp_path, proxy, sim, f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}", url
    proxy.start()
    while _STARTED:  # a test that failed half-way must not leave a gateway running
        _STARTED.pop().stop()
    sim.stop()
    proxy.close()
    asyncio.run(drop_pg_database(url))


_STARTED: list = []


def assert_stops_cleanly(gw) -> None:
    """SIGTERM ends the gateway with 0. Its own drain may take 10 s and a starved machine (the stress run:
    four workers and two burners) slows the flush and the closes after it, so it gets 30 s; the log, which
    names any step of the stop that ran over 2 s, comes with a failure."""
    code = gw.stop(timeout=30.0)
    assert code == 0, f"exit {code}:\n{gw.log()[-3000:]}"


def _gateway(tmp: Path, sim: Sim, store_url: str, key: str | None = None, admin_key: str | None = None, port: int | None = None,
             grace: float = 900.0, identity: dict | None = None):
    ident = {"name": "app", "owner": "o", "models": ["sim-small"], **({"keys": [key]} if key else {})}
    gw = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                         models=[{"name": "sim-small", "upstream": "sim"}], identities=[ident],
                         admin_key=admin_key, port=port,
                         extra={"store": {"url": store_url}, "lifecycle": {"spill_after": 20, "outage_grace_s": grace},
                                **({"identity": identity} if identity else {})})
    _STARTED.append(gw)
    return gw


@pytest.mark.timeout(600)
def test_a_store_outage_under_load_serves_known_identities_and_writes_every_record_once(outage):
    tmp, proxy, sim, store_url, direct = outage
    gw = _gateway(tmp, sim, store_url)
    key = gw.keys["app"]
    load = Load(gw.url, key)
    try:
        poll(lambda: load.ok > 20, 30, "no load got through before the outage")
        proxy.stop()
        t0 = time.monotonic()
        # /readyz reports the outage and how many records wait on disk
        body = poll(lambda: (lambda r: r.status_code == 503 and r.json()["store"] == "unavailable" and r.json()["usage_spilled"] > 0
                             and r.json())(httpx.get(gw.url + "/readyz", timeout=5)), OUTAGE_S + 5,
                    "readiness never reported the outage with records spilled")
        assert body["status"] == "not ready"
        ok_at_cut = load.ok
        while time.monotonic() - t0 < OUTAGE_S:
            time.sleep(0.2)
        assert load.ok - ok_at_cut > 50, f"only {load.ok - ok_at_cut} requests served during the outage"
        assert not load.failed, load.failed[:5]
        assert "spilled" in gw.log()
        proxy.start()
        poll(lambda: httpx.get(gw.url + "/readyz", timeout=5).status_code == 200, 30, "never ready again")
    finally:
        load.stop()
    assert not load.failed, load.failed[:5]
    served = sim.stats()["chat_requests"]
    assert served == load.ok
    # every record exactly once: as many rows as the sim answered, all request ids distinct
    poll(lambda: asyncio.run(_usage(direct))[0] == served, 30,
         f"usage rows {asyncio.run(_usage(direct))} != sim's {served}\n{gw.log()[-2000:]}")
    rows, distinct = asyncio.run(_usage(direct))
    assert rows == distinct == served
    assert_stops_cleanly(gw)


def test_a_replica_stopped_during_an_outage_leaves_its_usage_on_disk_for_the_next_one(outage):
    tmp, proxy, sim, store_url, direct = outage
    gw = _gateway(tmp, sim, store_url)
    key, admin_key, port = gw.keys["app"], gw.admin_key, gw.port
    proxy.stop()
    for _ in range(60):
        r = gw.post("/v1/chat/completions", key, json=CHAT)
        assert r.status_code == 200, r.text
    assert_stops_cleanly(gw)  # the store is down: close() spills what it could not write
    assert "usage records lost" not in gw.proc.log_path.read_text()
    spilled = sum(len(p.read_bytes().splitlines()) for p in (tmp / ".sluice" / "spill").glob("usage-*.jsonl"))
    assert spilled == 60
    proxy.start()
    again = _gateway(tmp, sim, store_url, key=key, admin_key=admin_key, port=port)
    try:
        poll(lambda: asyncio.run(_usage(direct))[0] == 60, 30, f"spilled records not written: {asyncio.run(_usage(direct))}")
        assert asyncio.run(_usage(direct)) == (60, 60)
        poll(lambda: all(p.stat().st_size == 0 for p in (tmp / ".sluice" / "spill").glob("usage-*.jsonl")), 10,
             "the spill file was not emptied after writing")
    finally:
        again.stop()


def test_known_identities_are_served_for_the_grace_period_then_refused_until_the_store_returns(outage):
    tmp, proxy, sim, store_url, _ = outage
    grace, known = 4.0, 1.0
    # The grace runs from the gateway's last confirmation of its registry, which its polls make at
    # their own pace. /readyz says "current" only while that confirmation is under ``known`` seconds
    # old: a "current" answer to a probe sent at T bounds the last confirmation from below by T - known,
    # so the grace cannot run out before T - known + grace, however the polls were scheduled.
    gw = _gateway(tmp, sim, store_url, grace=grace, identity={"max_staleness_s": known})
    key = gw.keys["app"]
    try:
        def probe() -> float | None:
            sent = time.monotonic()
            return sent if httpx.get(gw.url + "/readyz", timeout=5).json()["identity"] == "current" else None

        for _ in range(5):  # the cut must follow the probe closely, or the bound says little: try again
            sent = poll(probe, 10, "the gateway never reported its registry current")
            proxy.stop()  # every store connection aborted: no confirmation after this
            t0 = time.monotonic()
            if t0 - sent < 0.5:
                break
            proxy.start()
        else:
            pytest.fail("the store was never cut within 0.5 s of a probe")
        earliest = sent - known + grace  # at least 2.5 s after the cut
        r = gw.post("/v1/chat/completions", key, json=CHAT)
        assert r.status_code == 200, r.text  # within the grace period: served from memory

        def refusal() -> httpx.Response | None:
            r = gw.post("/v1/chat/completions", key, json=CHAT)
            answered = time.monotonic()
            if r.status_code == 503:
                assert answered >= earliest, (f"refused {answered - t0:.2f} s after the cut, before the grace period "
                                              f"ran out ({earliest - t0:.2f} s after the cut at the earliest)")
                return r
            assert r.status_code == 200, r.text
            return None

        refused = poll(refusal, 20, "never refused after the grace period")
        err = refused.json()["error"]
        assert err["code"] == "store_unavailable" and "Retry-After" in refused.headers
        assert "postgres" not in refused.text.lower() and "127.0.0.1" not in refused.text
        proxy.start()
        poll(lambda: gw.post("/v1/chat/completions", key, json=CHAT).status_code == 200, 20,
             "model calls not served again once the store returned")
    finally:
        proxy.start()
    assert_stops_cleanly(gw)
