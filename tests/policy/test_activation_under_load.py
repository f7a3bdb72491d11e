"""Activation is atomic: under 16 concurrent clients no request is dropped and every response names one
version whose route AND limit it was served by (no mix); a change on one replica reaches another
sharing its Postgres within a second."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx

from helpers import BODY, POLICY_HEADER, config, target_of
from store.pg_databases import drop_pg_database, fresh_pg_database
from support import Gateway, start_gateway
from sluice.identity import generate

IDENTS = [{"name": "app", "owner": "o@example.com", "models": ["*"]}]


def change(g: Gateway, i: int) -> tuple[int, tuple[str, str]]:
    """One change set that moves the route AND the limit together: step i -> (chat@v1|v2, rpm). Returns
    the version it made and what that version must serve, as this function chose it (not as the API says)."""
    target = "chat@v2" if i % 2 else "chat@v1"
    rpm = 1_000_000 + i
    routing = g.admin("GET", "/admin/policy/versions/active?format=json").json()["document"]["routing"]
    routing["routes"][0]["targets"] = [{"target": target, "weight": 100}]
    rules = [{"name": "per-identity", "requests_per_minute": rpm}]
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"routing": routing, "limits": {"rules": rules}},
                                                       "reason": f"step {i}"})
    assert r.status_code == 201, r.text
    return r.json()["version"], (target, str(rpm))


def test_activating_versions_under_16_clients_drops_nothing_and_mixes_nothing(sim, tmp_path):
    cfg = config(sim, f"sqlite:///{tmp_path}/sluice.db")
    g = start_gateway(tmp_path, upstreams=cfg.pop("upstreams"), models=cfg.pop("models"), identities=IDENTS, extra=cfg)
    try:
        # from here on every version has a limit, so every response carries one
        first, first_want = change(g, 0)
        want = {first: first_want}  # version -> (target, limit), from this test's own steps
        seen: list[tuple[str, str, str]] = []
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=g.url, headers={"Authorization": f"Bearer {g.keys['app']}"}, timeout=30) as c:
                while not stop.is_set():
                    try:
                        r = c.post("/v1/chat/completions", json=BODY)
                    except httpx.HTTPError as exc:
                        failures.append(type(exc).__name__)
                        continue
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:100]}")
                        continue
                    seen.append((r.headers[POLICY_HEADER], target_of(r), r.headers.get("x-ratelimit-limit-requests", "-")))

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()

        def served(version: int, at_least: int = 1) -> None:
            """Wait until ``at_least`` responses under ``version`` were seen (the clients keep running)."""
            deadline = time.monotonic() + 20
            while sum(1 for tag, _, _ in list(seen) if tag.startswith(f"{version}-")) < at_least:
                assert not failures, failures[:5]
                assert time.monotonic() < deadline, f"no response under version {version} in 20 s"
                time.sleep(0.01)

        served(first, 16)
        for i in range(1, 9):
            version, expect = change(g, i)
            assert version > max(want), (version, want)
            want[version] = expect
            served(version, 16)  # traffic crosses every activation
        stop.set()
        for t in threads:
            t.join(30)
        assert not failures, failures[:5]
        tags = {tag for tag, _, _ in seen}
        assert {int(tag.split("-")[0]) for tag in tags} == set(want), (tags, want)  # no version but the nine made
        assert len(tags) == len(want), tags  # one hash per version
        for tag in tags:
            version = int(tag.split("-")[0])
            got = {(t, lim) for tg, t, lim in seen if tg == tag}
            assert got == {want[version]}, (tag, got, want[version])
    finally:
        g.stop()


def test_an_activation_on_one_replica_reaches_the_other_within_a_second(sim, tmp_path_factory):
    url = asyncio.run(fresh_pg_database())
    admin_key, key = generate("prod", kind="admin"), generate("dev")
    cfg = {**config(sim, url), "identities": [{"name": "app", "owner": "o", "models": ["*"], "keys": [key]}]}
    gws: list[Gateway] = []
    try:
        for name in "ab":
            gws.append(Gateway(tmp_path_factory.mktemp(f"policy-replica-{name}"), cfg, {"app": key}, admin_key))
        a, b = gws

        def on_b() -> httpx.Response:
            r = b.post("/v1/chat/completions", key, json=BODY)
            assert r.status_code == 200, r.text
            return r

        assert on_b().headers[POLICY_HEADER].startswith("1-")  # both replicas serve the one seeded version
        change(a, 1)
        t0 = time.monotonic()
        while not on_b().headers[POLICY_HEADER].startswith("2-"):
            assert time.monotonic() - t0 < 1.0, "replica b still serves version 1 after a second"
            time.sleep(0.02)
        r = on_b()
        assert target_of(r) == "chat@v2" and r.headers["x-ratelimit-limit-requests"] == "1000001"
        # a switch made on b reaches a just as fast
        assert b.admin("POST", "/admin/switches/targets/chat@v2/disable",
                       json={"reason": "x", "fallback": "chat@v1"}).status_code == 200
        t0 = time.monotonic()
        while target_of(a.post("/v1/chat/completions", key, json=BODY)) != "chat@v1":
            assert time.monotonic() - t0 < 1.0, "replica a still routes to the killed target after a second"
            time.sleep(0.02)
    finally:
        for g in gws:
            g.stop()
        asyncio.run(drop_pg_database(url))
