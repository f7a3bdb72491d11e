"""The native upstream client against scripted upstreams on real sockets: framing, pooling, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from sluice.core.config import Upstream
from sluice.core.errors import Unavailable, UpstreamError, UpstreamTimeout
from sluice.upstream import NativeTransport
from sluice.upstream.openai import OpenAITransport

Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b'{"ok":true}'


class Upstream_:
    """A scripted upstream: counts connections and requests, answers with ``script``."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.requests = 0
        self.active = 0
        self.peak = 0
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up, or the test is over
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        self.requests += 1
        return await reader.readexactly(length)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def _reply(body: bytes = OK, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def _transport(up: Upstream_, **cfg) -> NativeTransport:
    t = NativeTransport(Upstream(name="u", base_url=await up.start(), **cfg))
    await t.start()
    return t


def _keepalive(up: Upstream_, answer: bytes | None = None, delay: float = 0.0) -> Script:
    async def script(reader, writer):
        while True:
            await up.read_request(reader)
            up.active += 1
            up.peak = max(up.peak, up.active)
            if delay:
                await asyncio.sleep(delay)
            up.active -= 1
            writer.write(answer or _reply())
            await writer.drain()
    return script


def _once(up: Upstream_, raw: bytes, hold: float = 0.0) -> Script:
    """Answer one request with ``raw`` bytes, then keep the connection ``hold`` seconds."""
    async def script(reader, writer):
        await up.read_request(reader)
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(hold)
    return script


async def test_sequential_requests_reuse_one_kept_alive_connection():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _keepalive(up)
    t = await _transport(up)
    for _ in range(5):
        r = await t.send("/chat/completions", b"{}")
        assert (r.status, r.body) == (200, OK)
    assert up.connections == 1 and up.requests == 5
    await t.close()
    await up.stop()


async def test_connections_per_upstream_are_bounded_and_callers_wait_in_line():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _keepalive(up, delay=0.2)
    t = await _transport(up, max_connections=2, pool_timeout=10)
    replies = await asyncio.gather(*(t.send("/chat/completions", b"{}") for _ in range(6)))
    assert [r.status for r in replies] == [200] * 6
    assert up.connections == 2 and up.peak == 2
    await t.close()
    await up.stop()


async def test_a_caller_that_waits_past_the_pool_timeout_gets_a_503():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _keepalive(up, delay=1.5)
    t = await _transport(up, max_connections=1, pool_timeout=0.3)
    first = asyncio.ensure_future(t.send("/chat/completions", b"{}"))
    await asyncio.sleep(0.05)
    with pytest.raises(Unavailable) as info:
        await t.send("/chat/completions", b"{}")
    assert info.value.status == 503 and info.value.retry_after
    assert (await first).status == 200
    await t.close()
    await up.stop()


async def test_upstream_connection_close_is_honoured_and_the_next_request_opens_a_new_one():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _once(up, _reply(extra=b"Connection: close\r\n"))
    t = await _transport(up)
    for _ in range(3):
        assert (await t.send("/chat/completions", b"{}")).body == OK
    assert up.connections == 3
    await t.close()
    await up.stop()


async def test_close_delimited_and_chunked_bodies_are_read_whole():
    up = Upstream_(None)  # type: ignore[arg-type]
    body = b'{"text":"' + b"x" * 100_000 + b'"}'

    async def script(reader, writer):
        await up.read_request(reader)
        if up.requests == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n" + body)
            await writer.drain()
            return  # the body ends with the connection
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 7000):
            piece = body[i:i + 7000]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await up.read_request(reader)

    up.script = script
    t = await _transport(up)
    assert (await t.send("/chat/completions", b"{}")).body == body
    assert (await t.send("/chat/completions", b"{}")).body == body
    await t.close()
    await up.stop()


async def test_an_idle_connection_the_upstream_closed_is_not_used_and_the_request_goes_out_on_a_new_one():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _once(up, _reply(), hold=0.05)  # then the upstream drops the idle connection (its keep-alive ran out)
    t = await _transport(up)
    assert (await t.send("/chat/completions", b"{}")).status == 200
    await asyncio.sleep(0.3)
    assert (await t.send("/chat/completions", b"{}")).status == 200
    assert up.connections == 2 and up.requests == 2  # never sent twice
    await t.close()
    await up.stop()


async def test_idle_connections_expire_after_the_idle_timeout():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _keepalive(up)
    t = await _transport(up, idle_timeout=0.4)
    await t.send("/chat/completions", b"{}")
    assert t.pool.open_connections == 1
    await asyncio.sleep(1.0)
    assert t.pool.open_connections == 0
    await t.close()
    await up.stop()


async def test_an_upstream_that_stalls_mid_body_times_out_at_the_read_timeout():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _once(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{", hold=5)
    t = await _transport(up, read_timeout=0.3)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(UpstreamTimeout):
        await t.send("/chat/completions", b"{}")
    assert loop.time() - t0 < 2.0
    await t.close()
    await up.stop()


async def test_a_body_cut_short_is_an_upstream_error_and_the_connection_is_dropped():
    up = Upstream_(None)  # type: ignore[arg-type]
    up.script = _once(up, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{short")
    t = await _transport(up)
    with pytest.raises(UpstreamError) as info:
        await t.send("/chat/completions", b"{}")
    assert info.value.code == "upstream_disconnected"
    assert t.pool.open_connections == 0
    await t.close()
    await up.stop()


async def test_a_slow_stream_reader_stops_the_upstream_instead_of_buffering_it():
    up = Upstream_(None)  # type: ignore[arg-type]
    sent = [0]

    async def script(reader, writer):
        await up.read_request(reader)
        writer.transport.set_write_buffer_limits(high=0)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        piece = b"data: " + b"x" * 8000 + b"\n\n"
        while sent[0] < 50_000_000:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            sent[0] += len(piece)

    up.script = script
    t = await _transport(up)
    stream = await t.open_stream("/chat/completions", b"{}")
    chunks = stream.chunks()
    await chunks.__anext__()
    await asyncio.sleep(1.0)  # a reader that does not read
    # What the upstream got out is our buffer (HIGH_WATER plus one read) and the kernel's socket
    # buffers, a few MB on loopback; without backpressure it would be all 50 MB within the second.
    assert sent[0] < 20_000_000, sent[0]
    stream.close()
    await chunks.aclose()
    await t.close()
    await up.stop()


# -- a hostile or broken upstream cannot grow our memory ------------------------------------------------


def _flood(up: Upstream_, head: bytes, piece: bytes, sent: list[int], total: int = 64_000_000) -> Script:
    """Answer with ``head``, then ``piece`` over and over (up to ``total`` bytes) while the client reads."""
    async def script(reader, writer):
        await up.read_request(reader)
        writer.write(head)
        while sent[0] < total:
            writer.write(piece)
            await writer.drain()
            sent[0] += len(piece)
    return script


async def _refused(t, up: Upstream_, sent: list[int]) -> None:
    with pytest.raises(UpstreamError) as info:
        await t.send("/chat/completions", b"{}")
    assert info.value.code == "upstream_response_too_large" and info.value.status == 502
    assert sent[0] < 16_000_000, sent[0]  # cut early, not read to the end
    await t.close()
    await up.stop()


@pytest.mark.parametrize("transport", ["native", "aiohttp"])
async def test_a_whole_answer_over_max_response_bytes_is_a_502_not_memory(transport):
    cls = NativeTransport if transport == "native" else OpenAITransport
    for head in (b"HTTP/1.1 200 OK\r\nContent-Length: 64000000\r\n\r\n",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                 b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 64000000\r\n\r\n"):  # an error page too
        up, sent = Upstream_(None), [0]  # type: ignore[arg-type]
        piece = b"x" * 65536
        up.script = _flood(up, head, b"%x\r\n%s\r\n" % (len(piece), piece) if b"chunked" in head else piece, sent)
        t = cls(Upstream(name="u", base_url=await up.start(), max_response_bytes=1_000_000))
        await t.start()
        await _refused(t, up, sent)


async def test_an_endless_response_head_is_refused_at_64_kib():
    # llhttp keeps a header until it is whole: one header that never ends would otherwise grow without end.
    up, sent = Upstream_(None), [0]  # type: ignore[arg-type]
    up.script = _flood(up, b"HTTP/1.1 200 OK\r\nX-Endless: ", b"y" * 4096, sent)
    t = await _transport(up)
    await _refused(t, up, sent)
    assert t.pool.open_connections == 0


async def test_a_stream_held_back_by_a_slow_reader_is_not_taken_for_a_stalled_upstream():
    # Our backpressure stops reading the upstream; that time is ours, not the upstream's silence.
    up = Upstream_(None)  # type: ignore[arg-type]
    piece = b"data: " + b"x" * 8000 + b"\n\n"
    total = 3_000_000

    async def script(reader, writer):
        await up.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        sent = 0
        while sent < total:
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            sent += len(piece)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    up.script = script
    t = await _transport(up, read_timeout=0.3)
    stream = await t.open_stream("/chat/completions", b"{}")
    chunks = stream.chunks()
    got = len(await chunks.__anext__())
    await asyncio.sleep(1.2)  # a reader that stops for four read timeouts, then reads on
    async for chunk in chunks:
        got += len(chunk)
    assert got >= total
    await t.close()
    await up.stop()
