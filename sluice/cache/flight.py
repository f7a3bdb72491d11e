"""One answer in flight for a cache key, and the identical requests it serves (issue 27, item 3: coalescing).

The first request for a key (the leader) goes upstream; identical ones that come while it is in flight wait on
its ``Flight`` instead. A streamed answer is read from the upstream by a task of its own (``run``, the pump),
never by a caller: each event goes into the flight's buffer and every reader (the leader's caller and every
streaming waiter) takes it from there at its own pace, so a waiter's first event leaves as soon as the
leader's does, and a caller that leaves (the leader's too) cuts nobody else. The upstream is stopped only
when no caller is left to read it (then the relay settles what was produced, as for a caller that leaves).

Memory is bounded: the buffer holds the whole stream while it fits in ``cap`` (what a late waiter replays
from the start); past it the flight takes no new waiter (they go upstream themselves), what every reader
has taken is dropped, and the pump waits while the slowest reader is more than ``cap`` behind (a stuck
client is cut by the listener's send timeout, and the others go on).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable
from typing import Any

from .wire import fresh_id

_ID = re.compile(rb'"id"[ \t]*:[ \t]*("[^"\\]*")')  # the first event's top-level id (it comes first)
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')
_USAGE = re.compile(rb'"usage"[ \t]*:[ \t]*\{')


class Reader:
    """One caller reading a streamed flight: where it is."""

    __slots__ = ("pos",)

    def __init__(self, pos: int) -> None:
        self.pos = pos


class Flight:
    """The answer of one upstream call, shared with the identical requests that came while it ran."""

    __slots__ = ("stream", "cap", "chunks", "base", "held", "joinable", "ended", "first", "result", "waiting",
                 "pump", "started", "broken", "failed", "leader_model", "on_idle", "leader_id", "_readers", "_more", "_room", "_pressed")

    def __init__(self, stream: bool, cap: int) -> None:
        loop = asyncio.get_running_loop()
        self.stream = stream  # the leader streams: waiters that stream follow it event by event
        self.cap = cap
        self.chunks: list[bytes] = []
        self.base = 0  # the index of chunks[0] in the whole stream (past ``cap``, the front is dropped)
        self.held = 0
        self.joinable = True  # False past ``cap``: a new waiter could not replay the stream
        self.ended = False
        self.first: asyncio.Future[bool] = loop.create_future()  # True at the first event; False: none will come
        self.result: asyncio.Future[Any] = loop.create_future()  # the entry (None: not one a waiter may be served)
        self.waiting = 0  # requests waiting for the first event or the result
        self.pump: asyncio.Task | None = None
        self.started = False
        self.broken = False  # the pump stopped before the stream's end (an error it did not write as an event)
        self.failed: tuple[int, str | None] | None = None  # the leader's stream ended in this error (status, code)
        self.leader_model: bytes | None = None  # the model as the leader's caller named it (a JSON string)
        self.on_idle: Callable[[], None] | None = None  # nobody reads any longer: stop the upstream
        self.leader_id: bytes | None = None  # the answer's id as the upstream wrote it (a JSON string)
        self._readers: set[Reader] = set()
        self._more = asyncio.Event()
        self._room = asyncio.Event()
        self._pressed = False

    # -- the pump ---------------------------------------------------------------------------------------
    async def run(self, inner: AsyncGenerator[bytes, None], end: Callable[[bool], None]) -> None:
        """Read the leader's stream into the buffer until it ends; ``end(complete)`` then lands the answer."""
        self.started = True
        complete = False
        try:
            async for chunk in inner:
                self._publish(chunk)
                while self.held > self.cap and self._readers:  # the slowest reader is far behind: wait for it
                    self._trim()
                    if self.held <= self.cap:
                        break
                    self._pressed = True
                    self._room.clear()
                    await self._room.wait()
                self._pressed = False
            complete = True
        finally:
            try:
                await inner.aclose()  # the relay's own clean-up (settling, the leader's usage record) has run
            finally:
                try:
                    end(complete)
                finally:
                    self.broken = not complete
                    self.ended = True
                    if not self.first.done():
                        self.first.set_result(False)
                    self._more.set()

    def _publish(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.held += len(chunk)
        if self.leader_id is None and chunk.startswith(b"data:"):
            m = _ID.search(chunk)
            if m is not None:
                self.leader_id = m.group(1)
        if not self.first.done() and not chunk.startswith(b":"):  # a keepalive comment is not an event
            self.first.set_result(True)
        if self.held > self.cap:
            self.joinable = False
            self._trim()
        self._more.set()
        self._more.clear()

    def _trim(self) -> None:
        """Past ``cap``: drop what every reader has taken (nobody new replays it)."""
        low = min((r.pos for r in self._readers), default=self.base + len(self.chunks))
        k = low - self.base
        if k > 0:
            self.held -= sum(map(len, self.chunks[:k]))
            del self.chunks[:k]
            self.base = low

    # -- readers ----------------------------------------------------------------------------------------
    def join(self) -> Reader:
        """A reader from the stream's start (only while ``joinable``: nothing was dropped yet)."""
        r = Reader(self.base)
        self._readers.add(r)
        return r

    def leave(self, r: Reader) -> None:
        if r in self._readers:
            self._readers.discard(r)
            if self._pressed:
                self._room.set()
            self.idle_check()

    def idle_check(self) -> None:
        """Nobody reads and nobody waits while the upstream still answers: stop it."""
        if not self._readers and not self.waiting and not self.ended and self.on_idle is not None:
            self.on_idle()

    async def read(self, r: Reader, *, fresh_id: bytes | None, usage: bool, model: tuple[bytes, bytes] | None,
                   broken: bytes) -> AsyncGenerator[bytes, None]:
        """The stream from ``r``'s place to its end, as one caller gets it: its own id (``fresh_id``, a JSON
        string; None: the upstream's), the usage event only if it asked, its own model name (``model``: the
        leader's and its own, JSON strings, when they differ). A pump that died without ending the stream in
        an event ends it with ``broken`` (an error event: never a silent cut)."""
        try:
            while True:
                at = r.pos - self.base
                chunks = self.chunks
                if at < len(chunks):
                    piece = chunks[at] if at == len(chunks) - 1 else b"".join(chunks[at:])
                    r.pos = self.base + len(chunks)
                    if self._pressed:
                        self._room.set()
                    out = _shaped(piece, self.leader_id, fresh_id, usage, model)
                    if out:
                        yield out
                    continue
                if self.ended:
                    if self.broken:
                        yield broken
                    return
                await self._more.wait()
        finally:
            self.leave(r)


def fresh_chat_id() -> bytes:
    """A new chat completion id, as a JSON string."""
    return b'"' + fresh_id() + b'"'


def _shaped(piece: bytes, leader_id: bytes | None, fresh_id: bytes | None, usage: bool,
            model: tuple[bytes, bytes] | None) -> bytes:
    if fresh_id is not None and leader_id is not None:
        piece = piece.replace(leader_id, fresh_id)
    if model is not None:
        piece = piece.replace(b'"model":' + model[0], b'"model":' + model[1]).replace(
            b'"model": ' + model[0], b'"model": ' + model[1])
    if not usage and b'"usage"' in piece:
        piece = without_usage(piece)
    return piece


def without_usage(block: bytes) -> bytes:
    """A block of whole events less its usage-only events (the caller did not ask for usage)."""
    if _USAGE.search(block) is None:
        return block
    out = []
    for event in block.split(b"\n\n"):
        if event and not (_USAGE.search(event) and (_EMPTY_CHOICES[0] in event or _EMPTY_CHOICES[1] in event)):
            out.append(event + b"\n\n")
    return b"".join(out)
