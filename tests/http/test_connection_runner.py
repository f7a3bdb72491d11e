"""A native connection answers its requests with one task that lives as long as the connection: it
waits between keep-alive requests and ends with the connection, however the connection ends (the
client closes, the idle timeout, a graceful stop), so idle and departed clients leave no tasks.

A real listener on a real socket in this process, so its tasks can be counted; raw sockets as clients."""

from __future__ import annotations

import asyncio

import pytest

from sluice.core.config import DataPlaneListener
from sluice.core.exchange import Reply
from sluice.http.server import NativeListener

REQUEST = b"GET /hi HTTP/1.1\r\nHost: x\r\n\r\n"


async def _hello(exchange) -> Reply:
    return Reply(200, b'{"hello":"%s"}' % exchange.request_id.encode())


def _runners() -> int:
    return sum(1 for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "Connection._run" and not t.done())


async def _listener(**cfg) -> NativeListener:
    lst = NativeListener("data", DataPlaneListener(host="127.0.0.1", port=0, **cfg), [("GET", "/hi", _hello)],
                         max_body_bytes=1024)
    await lst.start()
    return lst


@pytest.fixture
async def listen():
    """Start listeners (``await listen(**data_plane)``); each is stopped at the end of the test."""
    started: list[NativeListener] = []

    async def start(**cfg) -> NativeListener:
        started.append(await _listener(**cfg))
        return started[-1]
    yield start
    for lst in started:
        await lst.stop()  # a second stop is a no-op


async def _answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head + await reader.readexactly(length)


async def _settle(want: int, within: float = 3.0) -> int:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while _runners() != want and loop.time() < end:
        await asyncio.sleep(0.02)
    return _runners()


@pytest.mark.asyncio
async def test_one_task_answers_every_keep_alive_request_and_ends_when_the_client_closes(listen):
    lst = await listen()
    clients = [await asyncio.open_connection("127.0.0.1", lst.port) for _ in range(20)]
    for _ in range(3):  # three requests on each connection, one after the other
        for reader, writer in clients:
            writer.write(REQUEST)
            assert (await _answer(reader)).startswith(b"HTTP/1.1 200 OK")
    assert await _settle(20) == 20  # one per connection, waiting, not one per request
    for _, writer in clients:
        writer.close()
    assert await _settle(0) == 0


@pytest.mark.asyncio
async def test_pipelined_requests_are_answered_in_order_by_the_same_task(listen):
    lst = await listen()
    reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
    writer.write(REQUEST * 5)
    ids = [(await _answer(reader)).rsplit(b'"hello":"', 1)[1] for _ in range(5)]
    assert len(set(ids)) == 5
    writer.write(REQUEST)  # after a pause: the waiting task takes it
    assert (await _answer(reader)).startswith(b"HTTP/1.1 200 OK")
    assert _runners() == 1
    writer.close()
    assert await _settle(0) == 0


@pytest.mark.asyncio
async def test_an_idle_connection_closed_by_the_keep_alive_timeout_leaves_no_task(listen):
    lst = await listen(keepalive_timeout=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
    writer.write(REQUEST)
    await _answer(reader)
    assert _runners() == 1
    assert await reader.read() == b""  # the server closed it (the ticker runs each second)
    assert await _settle(0) == 0
    writer.close()


@pytest.mark.asyncio
async def test_a_graceful_stop_ends_the_tasks_of_idle_connections_at_once(listen):
    lst = await listen()
    clients = [await asyncio.open_connection("127.0.0.1", lst.port) for _ in range(10)]
    for reader, writer in clients:
        writer.write(REQUEST)
        await _answer(reader)
    assert _runners() == 10
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await lst.stop()
    assert loop.time() - t0 < 1.0  # idle connections are closed, not waited for
    assert await _settle(0) == 0
    for reader, writer in clients:
        assert await reader.read() == b""
        writer.close()
