"""Active health checks move traffic before a request fails; upstreams on link-local or cloud-metadata
addresses are refused unless allowed; a deployment's replicas share its load."""

from __future__ import annotations

import re
import threading
import time

import httpx
import pytest

from support import Sim, free_port, start_gateway

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
IDENTS = [{"name": "app", "owner": "o", "models": ["*"]}]


def test_an_upstream_that_fails_its_health_checks_gets_no_request_at_all(sim, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    g = start_gateway(
        tmp_path, models=[], identities=IDENTS,
        upstreams=[{"name": "dead", "base_url": dead, "connect_timeout": 0.5}, {"name": "sim", "base_url": sim.url + "/v1"}],
        extra={"registry": [{"name": "m", "versions": [
                   {"version": "primary", "upstream": "dead", "upstream_model": "sim-small", "approved": True},
                   {"version": "backup", "upstream": "sim", "upstream_model": "sim-small", "approved": True}]}],
               "routes": [{"name": "r", "targets": [{"target": "m@primary"}], "fallbacks": ["m@backup"]}],
               "resilience": {"health_interval_s": 0.2}})
    try:
        # no traffic: only the health rounds can open the dead target's breaker
        deadline = time.monotonic() + 10
        while not re.search(r'sluice_breaker_state\{state="open",target="m@primary",upstream="dead"\} 1\.0',
                            httpx.get(g.admin_url + "/metrics", timeout=5).text):
            assert time.monotonic() < deadline, "the health checks did not mark the dead upstream within 10 s"
            time.sleep(0.05)
        r = g.post("/v1/chat/completions", g.keys["app"], json=BODY)
        assert r.status_code == 200 and r.headers["x-sluice-route"] == "r; target=m@backup"
        why = g.admin("GET", f"/admin/routes/decisions/{r.headers['x-request-id']}").json()
        assert [a["target"] for a in why["attempts"]] == ["m@backup"]  # the dead one was never tried
        assert "m@primary: breaker open" in why["skipped"]
    finally:
        g.stop()


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/v1", "http://metadata.google.internal/v1",
                                 "http://[fd00:ec2::254]/v1", "http://[::ffff:169.254.169.254]/v1"])
def test_an_upstream_on_a_metadata_or_link_local_address_is_refused_at_start(tmp_path, url):
    try:
        g = start_gateway(tmp_path, upstreams=[{"name": "meta", "base_url": url}],
                          models=[{"name": "m", "upstream": "meta"}], identities=IDENTS)
    except RuntimeError as exc:  # the process exited: its log is the message
        message = str(exc)
    else:
        g.stop()  # (a red run leaves no process behind)
        pytest.fail("a gateway started with an upstream on a metadata or link-local address")
    assert "link-local or cloud-metadata" in message
    assert url not in message  # the log names the upstream, not its address


def test_an_explicitly_allowed_link_local_upstream_starts(tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "meta", "base_url": "http://169.254.169.254/v1",
                                            "allow_link_local": True}],
                      models=[{"name": "m", "upstream": "meta"}], identities=IDENTS)
    g.stop()


def test_a_deployments_replicas_share_its_load_by_least_outstanding_requests(tmp_path):
    a, b = Sim(tmp_path, **{"decode-ms": 20}), Sim(tmp_path, **{"decode-ms": 20})
    g = start_gateway(tmp_path, identities=IDENTS, models=[{"name": "m", "upstream": "pool", "upstream_model": "sim-small"}],
                      upstreams=[{"name": "pool", "base_url": a.url + "/v1", "replicas": [b.url + "/v1"]}])
    try:
        codes: list[int] = []

        def one() -> None:
            codes.append(g.post("/v1/chat/completions", g.keys["app"], json={**BODY, "max_tokens": 20}).status_code)

        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert codes == [200] * 8
        served = a.stats()["chat_requests"], b.stats()["chat_requests"]
        assert min(served) >= 3, served  # eight overlapping requests, split four and four give or take one

        # A load only least outstanding places right: one stream held open on one replica (the sims
        # stall streams after a token; plain replies are untouched), then plain requests one after
        # another. Each finds the holding replica at 1 in flight and the other at 0, so all go to the
        # other; round robin would send every second one to the busy replica.
        for s in (a, b):
            s.faults(stall_after_chunks=1)
            httpx.post(s.url + "/sim/stats/reset").raise_for_status()
        with httpx.stream("POST", g.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {g.keys['app']}"},
                          json={**BODY, "max_tokens": 20, "stream": True}, timeout=30) as held:
            assert held.status_code == 200
            deadline = time.monotonic() + 10
            while not any(s.stats()["streams_stalled"] for s in (a, b)):
                assert time.monotonic() < deadline, "the held stream never reached a replica"
                time.sleep(0.02)
            busy, idle = (a, b) if a.stats()["streams_stalled"] else (b, a)
            for _ in range(6):
                r = g.post("/v1/chat/completions", g.keys["app"], json=BODY)
                assert r.status_code == 200, r.text
            placed = {"busy": busy.stats()["chat_requests"], "idle": idle.stats()["chat_requests"]}
        assert placed == {"busy": 1, "idle": 6}
    finally:
        g.stop()
        a.stop()
        b.stop()
