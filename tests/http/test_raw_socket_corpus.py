"""The raw-socket corpus against the data plane's server: every malformed case gets a 4xx or a
clean close; never a hang, a 5xx, a success or a smuggled request. (It first ran beside the aiohttp
data plane, which it had to answer at least as safely as; that server is retired, issue 23.21, and
every case of the corpus is now held to a refusal.)"""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from raw import exchange
from support import Gateway, Sim, start_gateway

MODELS = [{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}]
IDENTITIES = [{"name": "app", "owner": "team-a@example.com", "models": ["sim-small", "sim-embed"]}]
# Short native deadlines so a slow sender is cut within the test's patience.
NATIVE = {"header_timeout": 1.0, "body_timeout": 2.0, "keepalive_timeout": 2.0}


@pytest.fixture(scope="module")
def servers(sim: Sim, tmp_path_factory: pytest.TempPathFactory):
    """The gateway under test, by the name of its data-plane server."""
    upstreams = [{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5, "total_timeout": 20}]
    g = start_gateway(tmp_path_factory.mktemp("native"), upstreams=upstreams, models=MODELS,
                      identities=IDENTITIES, extra={"data_plane": NATIVE})
    yield {"native": g}
    g.stop()


def _healthy(g: Gateway) -> bool:
    return httpx.get(g.url + "/healthz", timeout=5).status_code == 200


H = b"Host: sluice\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: sluice\r\n\r\n"

# (case id, bytes sent in one go); each must be refused or closed, and nothing smuggled answered.
MALFORMED: list[tuple[str, bytes]] = [
    ("garbage request line", b"GARBAGE\r\n\r\n"),
    ("unknown http version", b"GET /healthz HTTP/9.9\r\n" + H + b"\r\n"),
    ("double space in request line", b"GET  /healthz HTTP/1.1\r\n" + H + b"\r\n"),
    ("lowercase method", b"get /healthz HTTP/1.1\r\n" + H + b"\r\n"),
    ("nul in header name", b"GET /healthz HTTP/1.1\r\nX-\x00A: 1\r\n" + H + b"\r\n"),
    ("space before colon", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("conflicting content-lengths", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" + SMUGGLED),
    ("content-length with transfer-encoding", b"POST /v1/chat/completions HTTP/1.1\r\n" + H
     + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("transfer-encoding twice", b"POST /v1/chat/completions HTTP/1.1\r\n" + H
     + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("transfer-encoding not chunked", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED),
    ("negative content-length", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n" + SMUGGLED),
    ("content-length with plus", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello" + SMUGGLED),
    ("obsolete line folding", b"GET /healthz HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n"),
    ("bare LF line ends", b"GET /healthz HTTP/1.1\n" + H.replace(b"\r\n", b"\n") + b"\n"),
    ("oversized chunk size", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
    ("chunk size not hex", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n" + SMUGGLED),
    ("header too large", b"GET /healthz HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n"),
    ("too many headers", b"GET /healthz HTTP/1.1\r\n" + H + b"".join(b"X-H%d: 1\r\n" % i for i in range(40000)) + b"\r\n"),
    ("url too long", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n" + H + b"\r\n"),
    ("body over the limit by content-length", b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Length: 99999999\r\n\r\n"),
]

# RFC 9112 3: a recipient MAY parse the request line on whitespace boundaries, so a double space
# may be answered (llhttp does, as aiohttp did); it smuggles nothing and is held to the rest.
TOLERATED = {"double space in request line"}


@pytest.mark.parametrize("case,data", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_requests_are_refused_or_closed_never_answered_or_smuggled(servers, case, data):
    native = exchange(servers["native"].port, [data], wait=4.0)
    assert native.safe, f"native: {native}"
    assert b"/smuggled" not in native.raw, "a smuggled request was answered"
    assert b"Traceback" not in native.raw
    if case not in TOLERATED:
        assert all(400 <= s < 500 for s in native.statuses), f"a malformed request was answered: {native}"
    assert _healthy(servers["native"])


def test_oversized_headers_get_an_openai_shaped_431_that_echoes_nothing(servers):
    secret = b"do-not-echo-" + b"z" * 70000
    out = exchange(servers["native"].port, [b"GET /healthz HTTP/1.1\r\n" + H + b"X-Big: " + secret + b"\r\n\r\n"], wait=4.0)
    assert out.statuses == [431]
    assert b'"type":"invalid_request_error"' in out.raw and b"do-not-echo" not in out.raw


def test_pipelined_requests_are_answered_in_order(servers):
    reqs = b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n" + b"GET /nowhere HTTP/1.1\r\n" + H + b"\r\n" + b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n"
    for name, g in servers.items():
        out = exchange(g.port, [reqs], expect=3)
        assert out.statuses == [200, 404, 200], (name, out)


def test_a_slow_sender_is_cut_by_the_native_server_within_its_header_timeout(servers):
    g = servers["native"]
    t0 = time.monotonic()
    # One byte every 0.3 s never finishes the head; the 1 s header deadline (checked each second) ends it.
    out = exchange(g.port, [b"GET /healthz HTTP/1.1\r\n", *[b"X" for _ in range(30)]], gap=0.3, wait=6.0)
    assert out.closed and not out.hung
    assert out.statuses in ([], [408])
    assert time.monotonic() - t0 < 9.5  # 30 bytes take 9 s to send: the server gave up first
    assert _healthy(g)


def test_a_slow_body_is_cut_with_408_by_the_native_server(servers):
    g = servers["native"]
    out = exchange(g.port, [b"POST /v1/embeddings HTTP/1.1\r\n" + H + b"Content-Length: 100\r\n\r\n{"], wait=6.0)
    assert out.statuses == [408] and out.closed


def test_an_idle_keepalive_connection_is_closed_after_the_idle_timeout(servers):
    g = servers["native"]
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n")
        t0 = time.monotonic()
        data = b""
        while True:
            got = s.recv(65536)
            if not got:
                break
            data += got
        assert data.startswith(b"HTTP/1.1 200")
        assert 1.5 < time.monotonic() - t0 < 6.0


@pytest.mark.parametrize("cut", [b"GET /hea", b"GET /healthz HTTP/1.1\r\nHo", b"POST /v1/embeddings HTTP/1.1\r\n" + H + b"Content-Length: 50\r\n\r\n{\"a"])
def test_abrupt_closes_at_every_phase_leave_the_server_serving(servers, cut):
    for g in servers.values():
        for how in ("close", "reset"):
            s = socket.create_connection(("127.0.0.1", g.port))
            s.sendall(cut)
            if how == "reset":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.close()
        assert _healthy(g)


def test_a_client_that_pipelines_but_reads_nothing_is_stopped_by_backpressure(servers):
    g = servers["native"]
    block = (b"GET /healthz HTTP/1.1\r\n" + H + b"\r\n") * 1000  # 38 kB of pipelined requests
    sent = 0
    with socket.create_connection(("127.0.0.1", g.port)) as s:
        s.settimeout(3)
        try:
            while sent < 64 * 1024 * 1024:
                s.sendall(block)
                sent += len(block)
        except (socket.timeout, OSError):
            pass  # the server stopped reading us
        # Kernel buffers on loopback hold a few MB; past that, only the server reading could take more.
        assert sent < 64 * 1024 * 1024, "the server kept reading a client that never reads its answers"
        assert _healthy(g)


def test_half_closed_client_still_gets_its_answer_from_the_native_server(servers):
    # aiohttp closes without answering here; the native server answers, then closes. The
    # request goes upstream, so the answer comes well after the client's end of sending.
    g = servers["native"]
    body = b'{"model":"sim-embed","input":"half-closed"}'
    out = exchange(g.port, [b"POST /v1/embeddings HTTP/1.1\r\n" + H + b"Authorization: Bearer " + g.keys["app"].encode()
                            + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body],
                   shut_write=True)
    assert out.statuses == [200] and out.closed, out


def test_http_1_0_request_is_answered_then_closed(servers):
    for name, g in servers.items():
        # Closed at once, not after an idle timeout (2 s on the native side).
        out = exchange(g.port, [b"GET /healthz HTTP/1.0\r\n\r\n"], wait=1.5)
        assert out.statuses == [200] and out.closed and not out.hung, (name, out)


def _chat(key: str, *, stream: bool = False) -> bytes:
    return (b'{"model":"sim-small","max_tokens":3,"stream":%s,"messages":[{"role":"user","content":"hi"}]}'
            % (b"true" if stream else b"false"))


def test_chunked_request_body_is_accepted(servers):
    for name, g in servers.items():
        body = _chat(g.keys["app"])
        head = (b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Authorization: Bearer " + g.keys["app"].encode()
                + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7]) for i in range(0, len(body), 7))
        out = exchange(g.port, [head, chunks, b"0\r\n\r\n"], gap=0.05)
        assert out.statuses == [200], (name, out)


def test_expect_100_continue_is_honoured_and_a_stranger_is_refused_before_sending_the_body(servers):
    g = servers["native"]
    body = _chat(g.keys["app"])
    with socket.create_connection(("127.0.0.1", g.port), timeout=5) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Authorization: Bearer " + g.keys["app"].encode()
                  + b"\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert s.recv(100).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
    out = exchange(g.port, [b"POST /v1/chat/completions HTTP/1.1\r\n" + H
                            + b"Expect: 100-continue\r\nContent-Length: 1000\r\n\r\n"], wait=4.0)
    assert out.statuses == [401] and b"100 Continue" not in out.raw


def test_a_large_body_without_a_credential_is_refused_from_its_headers_alone(servers):
    g = servers["native"]
    # 3 MB announced, nothing sent: the answer must come without the body being read.
    out = exchange(g.port, [b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"
                            b"Content-Length: 3000000\r\n\r\n"], wait=4.0)
    assert out.statuses == [401] and out.closed and not out.hung


def test_a_pipelined_answer_never_overtakes_the_stream_before_it(servers):
    # The native server queues a stream's writes until the loop comes round; the answer after
    # it (a 404 that needs no await) must still come after the stream's last chunk.
    body = b'{"model":"sim-small","stream":true,"max_tokens":8,"messages":[{"role":"user","content":"hi"}]}'
    for name, g in servers.items():
        reqs = (b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Authorization: Bearer " + g.keys["app"].encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
                + b"GET /nowhere HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n")
        out = exchange(g.port, [reqs], wait=10.0)
        assert out.statuses == [200, 404] and out.closed, (name, out)
        stream, _, after = out.raw.partition(b"HTTP/1.1 404")
        assert stream.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), (name, stream[-200:])
        assert b"data:" not in after, (name, after)


def _peak_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_a_chunked_body_of_one_byte_chunks_costs_its_size_not_forty_times_it(sim: Sim, tmp_path):
    # 4 MB of body (the default limit) in 4,000,000 chunks. The native server kept a bytes object per
    # chunk: 344 MiB of peak memory for this one request, where aiohttp took 11 MiB.
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=MODELS,
                      identities=IDENTITIES)
    try:
        before = _peak_kib(g.proc.popen.pid)
        with socket.create_connection(("127.0.0.1", g.port), timeout=30) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n" + H + b"Authorization: Bearer " + g.keys["app"].encode()
                      + b"\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            block = b"1\r\nx\r\n" * 100_000
            for _ in range(40):
                s.sendall(block)
            s.sendall(b"0\r\n\r\n")
            answer = s.recv(200)
        assert answer.startswith(b"HTTP/1.1 400 "), answer  # 4 MB of "x" is not JSON
        grown = (_peak_kib(g.proc.popen.pid) - before) // 1024
        assert grown < 64, f"peak memory grew {grown} MiB for a 4 MB body"
        assert _healthy(g)
    finally:
        g.stop()
