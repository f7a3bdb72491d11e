"""The native server's connection lifecycle: a client that leaves is noticed at once, and a
graceful stop finishes the streams in flight while taking no new connections."""

from __future__ import annotations

import signal
import socket
import time

import httpx
import pytest

from support import Sim, start_gateway

IDENTITIES = [{"name": "app", "owner": "team-a@example.com", "models": ["sim-small"]}]


def _gateway(tmp, sim: Sim, **dp):
    return start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 10}],
                         models=[{"name": "sim-small", "upstream": "sim"}], identities=IDENTITIES,
                         extra={"data_plane": dp})


def _stream(g, max_tokens: int):
    return httpx.stream("POST", g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['app']}"},
                        json={"model": "sim-small", "stream": True, "max_tokens": max_tokens,
                              "messages": [{"role": "user", "content": "hi"}]}, timeout=30)


def test_a_client_leaving_between_slow_events_is_recorded_as_499_at_once(tmp_path):
    sim = Sim(tmp_path, **{"decode-ms": 4000})  # the next event is 4 s away: only the socket can tell
    g = _gateway(tmp_path, sim)
    try:
        since = time.time()
        with _stream(g, 50) as r:
            assert r.status_code == 200
            next(r.iter_bytes())
        t0 = time.monotonic()
        rows: list[dict] = []
        while not rows and time.monotonic() - t0 < 10:
            rows = g.admin("GET", f"/admin/usage?since={since}&limit=10").json()["data"]
            time.sleep(0.05)
        # The relay ended (and closed the upstream leg in its finally) well before the next event.
        assert time.monotonic() - t0 < 2.0, "the upstream leg outlived its client"
        assert rows[0]["status"] == 499 and rows[0]["error_code"] == "client_closed"
    finally:
        g.stop()
        sim.stop()


def test_graceful_stop_finishes_streams_in_flight_and_refuses_new_connections(tmp_path):
    sim = Sim(tmp_path, **{"decode-ms": 30})
    g = _gateway(tmp_path, sim, shutdown_timeout=20)
    try:
        with _stream(g, 60) as r:  # about 2 s of tokens
            it = r.iter_bytes()
            got = next(it)
            g.proc.popen.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            while "shutting down" not in g.log():  # the signal was taken: the listeners close next
                assert time.monotonic() < deadline, "the gateway did not start shutting down within 10 s"
                time.sleep(0.02)
            while True:  # a connect that lands before the listener closes may still be accepted
                try:
                    socket.create_connection(("127.0.0.1", g.port), timeout=2).close()
                except OSError:
                    break
                assert time.monotonic() < deadline, "new connections still accepted 10 s after SIGTERM"
                time.sleep(0.02)
            assert g.proc.popen.poll() is None, "the gateway exited instead of draining its stream"
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", g.port), timeout=2).close()
            for piece in it:
                got += piece
        assert got.rstrip().endswith(b"data: [DONE]")
        assert g.proc.popen.wait(20) == 0
    finally:
        g.stop()
        sim.stop()


def test_the_access_log_names_each_request_and_its_status_but_never_the_key(tmp_path):
    sim = Sim(tmp_path)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}], identities=IDENTITIES,
                      extra={"logging": {"level": "info", "access_log": True}})
    try:
        assert g.post("/v1/chat/completions", g.keys["app"], json={
            "model": "sim-small", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert httpx.get(g.url + "/nowhere").status_code == 404
        deadline = time.monotonic() + 10
        while True:  # the access log is written as each response ends: wait for both lines
            lines = g.log().splitlines()
            if (any("POST /v1/chat/completions" in line and " 200 " in line for line in lines)
                    and any("GET /nowhere" in line and " 404 " in line for line in lines)):
                break
            assert time.monotonic() < deadline, "no access log line for each request after 10 s"
            time.sleep(0.05)
        assert not any(g.keys["app"] in line for line in lines)
    finally:
        g.stop()
        sim.stop()
