"""A client that stops reading cannot hold its answer, its upstream and its limits forever: when the
native server's writes to it make no progress for ``data_plane.send_timeout`` (nginx's send_timeout),
the connection is cut, and the request is accounted as a client that left (499) with what it used.

Without it, a stream to a client that read nothing waited for the socket to drain for ever: the
request was never recorded in usage, and whatever its limits reserved stayed reserved.
"""

from __future__ import annotations

import json
import socket
import time

from support import Sim, start_gateway

SEND_TIMEOUT = 1.0


def _usage(g) -> list[dict]:
    r = g.admin("GET", "/admin/usage")
    r.raise_for_status()
    return r.json()["data"]


def _long_stream(tmp_path):
    """A gateway with a short send timeout, its sim, and a socket with a small window that has asked
    it for a stream of about 16 MB."""
    sim = Sim(tmp_path)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "o@example.com", "models": ["sim-small"]}],
                      extra={"data_plane": {"send_timeout": SEND_TIMEOUT},
                             "limits": {"max_tokens_cap": 20_000}})
    body = json.dumps({"model": "sim-small", "stream": True, "max_tokens": 20_000, "n": 128,
                       "messages": [{"role": "user", "content": "a long story"}]}).encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: the window stays small
    s.connect(("127.0.0.1", g.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n"
              b"Authorization: Bearer " + g.keys["app"].encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    return sim, g, s


def test_a_stream_to_a_client_that_reads_nothing_is_cut_and_recorded_as_499(tmp_path):
    sim, g, s = _long_stream(tmp_path)
    try:
        t0 = time.monotonic()
        records: list[dict] = []
        while time.monotonic() - t0 < 15 and not records:  # the timeout, the 1 s tick, the ledger's flush
            time.sleep(0.5)
            records = [r for r in _usage(g) if r["stream"]]
        took = time.monotonic() - t0
        assert records, "the stream to a client that reads nothing was never recorded"
        rec = records[0]
        assert rec["status"] == 499 and rec["error_code"] == "client_closed", rec
        assert rec["completion_tokens"] > 0  # what reached the buffers before the cut is charged
        assert took < SEND_TIMEOUT + 8, took
        # and the gateway still serves
        assert g.admin("GET", "/admin/usage").status_code == 200
    finally:
        s.close()
        g.stop()
        sim.stop()


def test_a_slow_reader_that_keeps_reading_is_not_cut(tmp_path):
    # Progress, not the whole buffer drained, is what counts: one byte every 20 ms for three send
    # timeouts keeps the stream open.
    sim, g, s = _long_stream(tmp_path)
    try:
        s.settimeout(5)
        got = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3 * SEND_TIMEOUT + 1.5:
            piece = s.recv(256)
            assert piece, f"cut after {time.monotonic() - t0:.1f} s while reading"
            got += len(piece)
            time.sleep(0.02)
        assert got > 0
        done = [r for r in _usage(g) if r["stream"]]
        assert not done, [(r["status"], r["error_code"], r["completion_tokens"], r["latency_ms"]) for r in done]  # still streaming
    finally:
        s.close()
        g.stop()
        sim.stop()
