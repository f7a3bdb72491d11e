"""One kept-alive connection to an upstream: an ``asyncio.Protocol`` over llhttp's response parser.

A connection carries one exchange at a time. The body arrives into a small buffer that a
reader drains; above ``HIGH_WATER`` the socket stops being read until the reader catches
up, so a slow client slows the upstream rather than growing our memory.

Read and total timeouts are deadlines, not timers: the pool's ticker (``Pool``) fails a busy
connection whose earlier deadline has passed, so an exchange costs a clock read per chunk and no
timer of its own (a timer armed and cancelled per exchange was ~2 µs of a ~40 µs request).
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# A response head past this is refused (nginx's proxy_buffer_size is 4-8 KiB): llhttp keeps a header
# until it is whole, so an upstream sending one endless header would otherwise grow our memory.
MAX_HEAD_BYTES = 64 * 1024


class Stalled(Exception):
    """No byte within the read timeout, or the total deadline passed."""


class Cut(Exception):
    """The connection ended, or spoke broken HTTP, before the response was complete."""


class TooLarge(Exception):
    """The response head, or a whole body read at once, is larger than the gateway accepts."""


class UpstreamConnection(asyncio.Protocol):
    """A socket to one upstream, reused across exchanges while the upstream keeps it alive."""

    __slots__ = ("_loop", "_transport", "_parser", "status", "retry_after", "_body", "_buffered", "_waiter",
                 "_complete", "_error", "_framed", "_headers_done", "_read_paused", "reusable", "idle_since",
                 "_last", "_read_timeout", "_deadline", "_busy", "_head_bytes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.retry_after: str | None = None
        self._body: deque[bytes] = deque()
        self._buffered = 0
        self._waiter: asyncio.Future[None] | None = None
        self._complete = False
        self._error: Exception | None = None
        self._framed = False
        self._headers_done = False
        self._read_paused = False
        self._busy = False
        self.reusable = True
        self.idle_since = 0.0
        self._last = 0.0
        self._read_timeout = 0.0
        self._deadline = 0.0
        self._head_bytes = 0

    # -- transport events --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._busy and not self._complete and self._error is None:
            if self._headers_done and not self._framed and self.status != 0:
                self._complete = True  # a close-delimited body ends with the connection
            else:
                self._error = Cut()
        self._wake()

    def eof_received(self) -> bool:
        self.reusable = False
        return False

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # Bytes nobody asked for: the upstream is confused; never reuse this socket.
            self.reusable = False
            self._transport.close()  # type: ignore[union-attr]
            return
        self._last = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Cut())
        except httptools.HttpParserError:
            self._fail(Cut())
            return
        if not self._headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(TooLarge())

    # -- parser callbacks ----------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"retry-after":
            self.retry_after = value.decode("latin-1")
        elif n == b"content-length" or n == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self._headers_done = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._read_paused:
            self._read_paused = True
            self._transport.pause_reading()  # type: ignore[union-attr]
        self._wake()

    def on_message_complete(self) -> None:
        self._complete = True
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._wake()

    # -- the exchange --------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Still open and fit to carry another exchange."""
        return self.reusable and self._transport is not None and not self._transport.is_closing()

    def send(self, request: bytes, read_timeout: float, deadline: float) -> None:
        """Start one exchange: reset the response state, write the request; ``overdue`` then says when it is late.

        The parser is reused: llhttp starts over after a complete keep-alive response, and a
        connection whose response was not complete never carries another exchange.
        """
        self.status = 0
        self.retry_after = None
        self._body.clear()
        self._buffered = 0
        self._complete = False
        self._error = None
        self._framed = False
        self._headers_done = False
        self._head_bytes = 0
        self._busy = True
        self._read_timeout = read_timeout
        self._deadline = deadline
        self._last = self._loop.time()
        self._transport.write(request)  # type: ignore[union-attr]

    def overdue(self, now: float) -> bool:
        """Fail the exchange if no byte came within the read timeout or the total deadline passed.

        While we are not reading (a slow client holds the stream back) the upstream's silence is
        ours: only the total deadline runs, and the read timeout starts again when reading resumes.
        """
        if self._busy and not self._complete and (now >= self._deadline or (
                not self._read_paused and now >= self._last + self._read_timeout)):
            self._fail(Stalled())
            return True
        return False

    def _fail(self, error: Exception) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def take_body(self) -> bytes | None:
        """The whole body at once when it has all arrived and nothing failed (the common reply), else None."""
        if not self._complete or self._error is not None:
            return None
        body = self._body
        if not body:
            return b""
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self._buffered = 0
        return data

    def ready(self) -> bool:
        """A piece of body, its end or an error is already here: ``read`` will not wait."""
        return bool(self._body) or self._complete or self._error is not None

    async def head(self) -> int:
        """Wait for the status line and headers; returns the status."""
        while not self._headers_done:
            if self._error is not None:
                raise self._error
            if self._complete:
                break
            await self._wait()
        return self.status

    async def read_all(self, limit: int) -> list[bytes]:
        """The rest of the body, as the pieces it came in; ``TooLarge`` once it passes ``limit`` bytes (the
        connection must not go back to the pool then: its response was not read to the end)."""
        pieces: list[bytes] = []
        room = limit
        while True:
            piece = await self.read()
            if not piece:
                return pieces
            room -= len(piece)
            if room < 0:
                raise TooLarge()
            pieces.append(piece)

    async def read(self) -> bytes:
        """The next piece of body; ``b""`` once the body is complete."""
        while True:
            body = self._body
            if body:
                piece = body.popleft()
                self._buffered -= len(piece)
                if self._read_paused and self._buffered < LOW_WATER and not self._complete:
                    self._read_paused = False
                    self._last = self._loop.time()  # the read timeout counts from here
                    self._transport.resume_reading()  # type: ignore[union-attr]
                return piece
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            await self._wait()

    def finish(self) -> bool:
        """End the exchange; True when the socket may go back to the pool."""
        self._busy = False
        ok = self._complete and self._error is None and not self._body and self.alive
        if not ok:
            self.reusable = False
            if self._transport is not None:
                self._transport.abort()
        elif self._read_paused:
            self._read_paused = False
            self._transport.resume_reading()  # type: ignore[union-attr]
        self.idle_since = self._loop.time()
        return ok

    def close(self) -> None:
        """Drop the socket."""
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()
