"""The writing half of a native connection: answers out in order, a stream's pieces batched per
loop turn, backpressure from the client's socket, and the send timeout's check of a stalled one."""

from __future__ import annotations

import asyncio
import logging
import sys

from ..core.exchange import Reply, StreamReply
from .host import ConnectionHost
from .parsed import ParsedRequest
from .wire import CRLF, LAST_CHUNK, chunk_size_line, reply_bytes, stream_head

log = logging.getLogger("sluice.http")

try:  # Linux: bytes in a socket's send queue (SIOCOUTQ)
    import fcntl
    import termios

    _OUTQ: int | None = termios.TIOCOUTQ
except (ImportError, AttributeError):
    _OUTQ = None


class Writes(asyncio.Protocol):
    """The write state of one connection and what moves it; ``Connection`` adds the reading half."""

    def __init__(self, server: ConnectionHost) -> None:
        self._server = server
        self._loop = server.loop
        self._transport: asyncio.Transport | None = None
        self._lost = False
        self._streaming = False
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._pending: list[bytes] = []  # stream writes not yet handed to the transport
        self._pending_bytes = 0
        self._flush_handle: asyncio.Handle | None = None
        self.write_deadline = 0.0  # while writes are paused: when the ticker checks they moved at all
        self._write_left = 0

    def pause_writing(self) -> None:
        self._write_paused = True
        # the ticker cuts us if by then the client has taken none of what is unsent (``write_stalled``)
        self.write_deadline = self._loop.time() + self._server.send_timeout
        self._write_left = unsent(self._transport)  # type: ignore[arg-type]

    def resume_writing(self) -> None:
        self._write_paused = False
        self.write_deadline = 0.0
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)

    async def _drained(self) -> None:
        if self._write_paused and not self._lost:
            self._drain = self._loop.create_future()
            await self._drain
            self._drain = None

    async def _write_reply(self, reply: Reply, rid: str, keep: bool, head: bool) -> None:
        await self._drained()
        if not self._lost:
            self._transport.write(reply_bytes(reply, rid, keep, head))  # type: ignore[union-attr]

    async def _write_stream(self, reply: StreamReply, rid: str, keep: bool, req: ParsedRequest) -> bool:
        chunks = reply.chunks
        chunked = not req.http10  # an HTTP/1.0 client gets a close-delimited body
        started = False
        self._streaming = True
        try:
            await self._drained()
            if self._lost:
                return False
            self._queue_write(stream_head(reply.status, reply.content_type, reply.headers, rid, chunked, keep))
            if req.head:
                return keep
            async for piece in chunks:
                started = True
                if self._lost:
                    return False
                if piece:
                    if chunked:
                        self._queue_write(chunk_size_line(len(piece)), piece, CRLF)
                    else:
                        self._queue_write(piece)
                if self._write_paused:
                    await self._drained()
            if self._lost:
                return False
            if chunked:
                self._queue_write(LAST_CHUNK)
            return keep and chunked
        finally:
            self._flush()  # whatever is queued goes out before anything of the next answer
            self._streaming = False
            if not started and reply.abandon is not None:
                reply.abandon()
            await chunks.aclose()

    # A stream's writes are queued and go out in one writelines when the loop comes round (or at
    # once past WRITE_BATCH bytes, or when the stream ends): the head, the events and the last
    # chunk of a fast stream, at hand in one turn of the loop, cost one send instead of three.
    # Nothing waits on a timer: a slow stream's head and each of its events leave in the turn
    # they were written (a 2 ms hold of the head for its first event added 2 ms to the time to
    # first byte of every slow stream, issue 23.20).
    WRITE_BATCH = 64 * 1024

    def _queue_write(self, *parts: bytes) -> None:
        self._pending.extend(parts)
        self._pending_bytes += sum(map(len, parts)) if len(parts) > 1 else len(parts[0])
        if self._pending_bytes > self.WRITE_BATCH:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        handle = self._flush_handle
        if handle is not None:
            handle.cancel()
            self._flush_handle = None
        pending = self._pending
        if pending:
            self._pending, self._pending_bytes = [], 0
            if not self._lost:
                self._transport.writelines(pending)  # type: ignore[union-attr]

    def write_stalled(self, now: float) -> None:
        """The ticker found our write deadline passed: cut the client if its socket took nothing."""
        transport = self._transport
        if transport is None or self._lost:
            return
        left = unsent(transport)  # type: ignore[arg-type]
        if left < self._write_left:  # slow, but reading: another send_timeout from now
            self._write_left = left
            self.write_deadline = now + self._server.send_timeout
            return
        self.write_deadline = 0.0
        log.info("native server: cut a client that read nothing for %.0f s", self._server.send_timeout)
        transport.abort()  # connection_lost stops a stream's producer, which accounts it as 499


def unsent(transport: asyncio.Transport) -> int:
    """Bytes written to the client and not yet taken by it: our buffer, plus (on Linux) the kernel's
    send queue, which holds hundreds of KiB and drains first when a slow client reads."""
    left = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if sock is not None and _OUTQ is not None:
        try:
            left += int.from_bytes(fcntl.ioctl(sock.fileno(), _OUTQ, bytes(4)), sys.byteorder, signed=True)
        except (OSError, ValueError):
            pass
    return left
