"""A bounded pool of kept-alive connections to one upstream, with a wait queue and idle expiry.

Connections go back only after a complete response (``UpstreamConnection.finish``); a
caller that finds the pool full waits in line, up to ``pool_timeout``, for a connection
to come back or for room to open a new one. The pool's ticker enforces the read and total
timeouts of the connections in use: one timer for the pool, none per exchange.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable

from .connection import UpstreamConnection


class PoolTimeout(Exception):
    """No connection came free within the pool timeout."""


class Pool:
    """Connections to one ``host:port`` (TLS when ``ssl_context`` is given)."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, limit: int,
                 connect_timeout: float, pool_timeout: float, idle_timeout: float, tick: float = 0.1,
                 protocol: Callable[[asyncio.AbstractEventLoop], UpstreamConnection] = UpstreamConnection) -> None:
        self._protocol = protocol  # a subclass that reads more of the response head (the MCP client's)
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._pool_timeout = pool_timeout
        self._idle_timeout = idle_timeout
        self._idle: deque[UpstreamConnection] = deque()
        self._busy: set[UpstreamConnection] = set()  # lent out until released: the ticker checks their deadlines
        self._tick = tick
        self._ticker: asyncio.TimerHandle | None = None
        self._waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self._open = 0
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._sweeper = self._loop.call_later(self._idle_timeout / 2, self._sweep)
        self._ticker = self._loop.call_later(self._tick, self._check_deadlines)

    def _check_deadlines(self) -> None:
        """Fail the exchanges past their read or total deadline (a timeout fires at most one tick late)."""
        loop = self._loop
        assert loop is not None
        if self._busy:
            now = loop.time()
            for conn in [c for c in self._busy if c.overdue(now)]:
                self._busy.discard(conn)
        self._ticker = loop.call_later(self._tick, self._check_deadlines)

    def take_idle(self) -> UpstreamConnection | None:
        """A live idle connection now, without waiting (the common case), or None: ``acquire`` then.
        A connection handed out (here or by ``acquire``) is watched by the ticker until ``release``."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.alive:
                self._busy.add(conn)
                return conn
            self._discard(conn)  # died while idle: never sent on, so trying another is safe
        return None

    def _sweep(self) -> None:
        """Close connections idle longer than ``idle_timeout`` (the upstream would drop them soon)."""
        loop = self._loop
        assert loop is not None
        cutoff = loop.time() - self._idle_timeout
        idle = self._idle
        while idle and (idle[0].idle_since < cutoff or not idle[0].alive):
            self._discard(idle.popleft())
        self._sweeper = loop.call_later(self._idle_timeout / 2, self._sweep)

    @property
    def open_connections(self) -> int:
        """Connections open now, idle or busy."""
        return self._open

    async def acquire(self) -> UpstreamConnection:
        """A live connection: the most recently used idle one, a new one, or the next one freed."""
        conn = self.take_idle()
        if conn is not None:
            return conn
        if self._open < self._limit:
            return await self._connect()
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            got = await asyncio.wait_for(waiter, self._pool_timeout)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled():
                self._pass_back(waiter.result())  # handed to us as we gave up: not ours to keep
            if isinstance(exc, asyncio.TimeoutError):
                raise PoolTimeout() from None
            raise
        if got is None or not got.alive:
            if got is not None:
                self._discard(got)
            return await self._connect()  # our turn to open one
        self._busy.add(got)
        return got

    async def _connect(self) -> UpstreamConnection:
        loop = self._loop
        assert loop is not None
        self._open += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: self._protocol(loop), self._host, self._port, ssl=self._ssl,
                                       server_hostname=self._host if self._ssl else None),
                self._connect_timeout,
            )
        except BaseException:
            self._open -= 1
            self._hand_on(None)
            raise
        self._busy.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Take a connection back after its exchange: kept if reusable, else closed."""
        self._busy.discard(conn)
        if not conn.finish():
            self._discard(conn)
        elif self._waiters and self._hand_on(conn):
            pass
        else:
            self._idle.append(conn)

    def _pass_back(self, conn: UpstreamConnection | None) -> None:
        if conn is None:
            self._hand_on(None)
        elif not self._hand_on(conn):
            self._idle.append(conn)

    def _discard(self, conn: UpstreamConnection) -> None:
        conn.close()
        self._open -= 1
        self._hand_on(None)

    def _hand_on(self, conn: UpstreamConnection | None) -> bool:
        """Give the first caller in line a connection, or (None) room to open one; False if nobody waits."""
        waiters = self._waiters
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(conn)
                return True
        return False

    def close(self) -> None:
        """Close every idle connection and stop the sweeper; busy ones close as they finish."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
        while self._idle:
            self._discard(self._idle.popleft())
