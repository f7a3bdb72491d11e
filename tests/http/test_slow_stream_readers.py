"""Many clients reading long streams one byte at a time: the gateway's memory stays flat,
because each slow client holds back its upstream instead of being buffered for.

The default run is short; ``SLUICE_SLOW_READ_SECONDS=60`` is the soak
(bench/README.md).
"""

from __future__ import annotations

import json
import os
import socket
import time

from support import Sim, start_gateway

READERS = 64
SECONDS = float(os.environ.get("SLUICE_SLOW_READ_SECONDS", "8"))
TOKENS = 20_000
CHOICES = 128  # with TOKENS, about 16 MB of events per stream: 64 of them buffered would be unmistakable
# What one slow reader may cost the native server: its share of the upstream read buffer, the
# write buffer and one event in hand (about 1 MiB measured; the retired aiohttp data plane took about 3).
NATIVE_BUDGET_KIB = 2048


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def test_sixty_four_slow_stream_readers_keep_gateway_memory_flat(tmp_path):
    sim = Sim(tmp_path)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 120}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "o@example.com", "models": ["sim-small"]}],
                      extra={"limits": {"max_tokens_cap": TOKENS}})
    body = json.dumps({"model": "sim-small", "stream": True, "max_tokens": TOKENS, "n": CHOICES,
                       "messages": [{"role": "user", "content": "a long story"}]}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: sluice\r\nContent-Type: application/json\r\n"
               b"Authorization: Bearer " + g.keys["app"].encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    socks = []
    before = _rss_kib(g.proc.popen.pid)
    try:
        for _ in range(READERS):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect, so the window stays small
            s.connect(("127.0.0.1", g.port))
            s.sendall(request)
            socks.append(s)
        got = [0] * READERS
        # Warm-up: every stream has started and filled whatever buffers sit between us and the sim.
        t0 = time.monotonic()
        samples = []
        while time.monotonic() - t0 < SECONDS:
            for i, s in enumerate(socks):
                got[i] += len(s.recv(1))
            time.sleep(0.1)
            if time.monotonic() - t0 > 2.0:
                samples.append(_rss_kib(g.proc.popen.pid))
        assert all(got), "every reader received its stream's first bytes"
        base, last = samples[0], max(samples[-5:])
        print(f"\nRSS {before} KiB idle, {base} KiB at 2 s, {last} KiB at the end ({SECONDS:.0f} s)")
        assert last <= base * 1.10, f"RSS grew from {base} KiB to {last} KiB with {READERS} slow readers"
        grown = max(samples) - before
        assert grown <= READERS * NATIVE_BUDGET_KIB, f"{grown} KiB for {READERS} slow readers"
    finally:
        for s in socks:
            s.close()
        g.stop()
        sim.stop()
