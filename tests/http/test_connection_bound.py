"""A flood of client connections cannot take the gateway down: past ``data_plane.max_connections``
a new connection gets an OpenAI-shaped 503 and a close, the connections inside the bound keep being
served, the control plane keeps answering, and the bound frees as connections close.

Without a bound, idle connections (a few thousand a second, each held until the 10 s header
deadline) used up the process's file descriptors: every request then failed, the upstreams could
not be reached and the control plane could not accept its health checks.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import time

import httpx
import pytest

from support import Gateway, Sim, start_gateway

BOUND = 8
CHAT = {"model": "sim-small", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def gateway(sim: Sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "o@example.com", "models": ["sim-small"]}],
                      extra={"data_plane": {"max_connections": BOUND}})
    yield g
    g.stop()


def _read_all(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes: (bytes, whether it closed cleanly)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            got = sock.recv(65536)
            if not got:
                return data, True
            data += got
    except (ConnectionResetError, socket.timeout):
        return data, False


def _refusal(raw: bytes) -> dict:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 503 "), lines[0]
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["connection"] == "close" and headers["retry-after"] == "1"
    assert int(headers["content-length"]) == len(body)
    return json.loads(body)["error"]


def _idle(n: int, port: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _peers(g: Gateway) -> set[int]:
    """The client ports of the data-plane connections the gateway process has accepted (holds a descriptor of)."""
    fds = f"/proc/{g.proc.popen.pid}/fd"
    inodes = set()
    for fd in os.listdir(fds):
        try:
            link = os.readlink(f"{fds}/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    peers = set()
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            cols = row.split()
            local, remote, inode = cols[1], cols[2], cols[9]
            if int(local.split(":")[1], 16) == g.port and inode in inodes:
                peers.add(int(remote.split(":")[1], 16))
    return peers


def _accepted(g: Gateway, socks: list[socket.socket], deadline: float = 10.0) -> None:
    """Wait until the gateway has accepted every one of ``socks`` (a kernel handshake alone is not that)."""
    ports = {s.getsockname()[1] for s in socks}
    end = time.monotonic() + deadline
    while not ports <= _peers(g):
        assert time.monotonic() < end, f"{len(ports - _peers(g))} of {len(ports)} connections not accepted after {deadline} s"
        time.sleep(0.02)


def _answered(socks: list[socket.socket], deadline: float = 10.0) -> None:
    """Wait until every one of ``socks`` has something to read (its 503 was written), reading nothing."""
    end = time.monotonic() + deadline
    for s in socks:
        s.settimeout(max(end - time.monotonic(), 0.01))
        try:
            assert s.recv(1, socket.MSG_PEEK), "closed without an answer"
        except TimeoutError:
            raise AssertionError(f"a refused connection had no 503 to read after {deadline} s") from None
        s.settimeout(5)


def _wait_served(g: Gateway, deadline: float = 10.0) -> httpx.Response:
    """The first answer a new connection gets within ``deadline`` that is not the 503 of the bound."""
    end = time.monotonic() + deadline
    while True:
        with httpx.Client(timeout=5) as c:
            r = c.post(g.url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {g.keys['app']}"})
        if r.status_code != 503 or time.monotonic() > end:
            return r
        time.sleep(0.1)


def test_connections_past_the_bound_get_a_503_and_those_inside_it_keep_being_served(gateway: Gateway):
    g = gateway
    auth = {"Authorization": f"Bearer {g.keys['app']}"}
    inside = httpx.Client(timeout=5)  # a caller kept alive from before the flood
    assert inside.post(g.url + "/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
    flood = _idle(BOUND - 1, g.port)  # with the caller's connection: the bound is reached
    _accepted(g, flood)
    try:
        # a newcomer that only reads gets the whole 503, then a clean close
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        raw, clean = _read_all(sock)
        sock.close()
        assert clean, raw
        err = _refusal(raw)
        assert err["code"] == "too_many_connections" and "too many open connections" in err["message"]
        # a newcomer that sends its request at once reads the same 503: no reset overtakes it
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + g.keys["app"].encode() + b"\r\nContent-Length: 2\r\n\r\n{}")
        raw, clean = _read_all(sock)
        sock.close()
        assert clean and _refusal(raw)["code"] == "too_many_connections"
        # an HTTP client sees an OpenAI-shaped 503 with Retry-After
        with httpx.Client(timeout=5) as c:
            r = c.post(g.url + "/v1/chat/completions", json=CHAT, headers=auth)
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections"
        # inside the bound nothing changed, and the control plane still answers
        for _ in range(3):
            assert inside.post(g.url + "/v1/chat/completions", json=CHAT, headers=auth).status_code == 200
        assert httpx.get(g.admin_url + "/readyz", timeout=5).status_code == 200
    finally:
        for s in flood:
            s.close()
    # the bound frees as the flood's connections close
    assert _wait_served(g).status_code == 200
    inside.close()
    assert "connections get 503" in g.proc.log()  # one warning says why, with no request in it


def test_refused_connections_that_never_read_are_cut_and_bounded_too(gateway: Gateway):
    g = gateway
    flood = _idle(BOUND, g.port)
    _accepted(g, flood)
    lingering = _idle(16, g.port)  # refused, never read: each holds its 503 until it is cut
    opened = time.monotonic()
    _answered(lingering)
    try:
        # past the lingering bound (16 at BOUND = 8) a newcomer is cut at once, without an answer
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        raw, _ = _read_all(sock, timeout=3)
        sock.close()
        assert raw == b""
        # each lingering one had its 503 written and is cut within SHED_LINGER (1 s) and a margin:
        # the gateway lets go of every one of them (its descriptor closed after the connection is counted out)
        ports = {s.getsockname()[1] for s in lingering}
        while ports & _peers(g):
            assert time.monotonic() - opened < 4.0, f"{len(ports & _peers(g))} refused connections still held after 4 s"
            time.sleep(0.02)
        raws = [_read_all(s, timeout=3)[0] for s in lingering]
        assert all(r.startswith(b"HTTP/1.1 503 ") for r in raws), raws[:2]
        # their descriptors are free again: a refused newcomer reads its 503 once more
        sock = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        raw, clean = _read_all(sock)
        sock.close()
        assert clean and _refusal(raw)["code"] == "too_many_connections"
    finally:
        for s in flood + lingering:
            s.close()
    assert _wait_served(g).status_code == 200


def test_sluice_serve_lifts_its_soft_open_file_limit_to_the_hard_one(sim: Sim, tmp_path):
    # A soft limit of 1,024 is common; the default bound is half of what is in force after the lift.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = len(os.listdir("/proc/self/fd")) + 256  # room for what this test process still opens meanwhile
    if hard != resource.RLIM_INFINITY and low >= hard:
        pytest.skip(f"the hard open-file limit ({hard}) leaves nothing to lift")
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # inherited by the gateway started now
    try:
        g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                          models=[{"name": "sim-small", "upstream": "sim"}],
                          identities=[{"name": "app", "owner": "o@example.com", "models": ["sim-small"]}],
                          extra={})
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        limits = open(f"/proc/{g.proc.popen.pid}/limits").read()
        row = next(line for line in limits.splitlines() if line.startswith("Max open files")).split()
        want = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
        assert int(row[3]) == want, row
    finally:
        g.stop()
