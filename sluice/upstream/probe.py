"""The native client's active health check: one small GET on a connection of its own.

Not through the pool: a pool that is busy (every connection carrying a long stream) must not read
as a server that is down, and a probe must not take a slot that a request is waiting for. ``fetch``
reads a whole small answer the same way (a backend's model list, for its digests: routing.supply).
"""

from __future__ import annotations

import asyncio
import ssl

import httptools


async def answers(host: str, port: int, ssl_context: ssl.SSLContext | None, request: bytes, timeout: float) -> bool:
    """Whether the server answers ``request`` with a status below 500 within ``timeout`` seconds."""
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None)
            writer.write(request)
            line = await reader.readline()  # "HTTP/1.1 200 OK"
        parts = line.split(None, 2)
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit() and int(parts[1]) < 500
    except (OSError, asyncio.TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.transport.abort()


class _Answer:
    """llhttp's callbacks for one response: its status, its body (bounded), whether it is complete."""

    __slots__ = ("parser", "status", "body", "size", "limit", "done")

    def __init__(self, limit: int) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.body: list[bytes] = []
        self.size = 0
        self.limit = limit
        self.done = False

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > self.limit:
            raise ValueError("answer too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


async def fetch(host: str, port: int, ssl_context: ssl.SSLContext | None, request: bytes, timeout: float,
                limit: int = 1 << 20) -> bytes | None:
    """The body of a 200 answer to ``request`` (at most ``limit`` bytes, any framing), else None."""
    writer: asyncio.StreamWriter | None = None
    answer = _Answer(limit)
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_context, server_hostname=host if ssl_context else None)
            writer.write(request)
            while not answer.done:
                data = await reader.read(65536)
                if not data:
                    answer.parser.feed_data(b"")  # a close-delimited body ends here; else llhttp raises
                    break
                answer.parser.feed_data(data)
        return b"".join(answer.body) if answer.status == 200 and answer.done else None
    except (OSError, asyncio.TimeoutError, ValueError, httptools.HttpParserError):
        return None
    finally:
        if writer is not None:
            writer.transport.abort()
