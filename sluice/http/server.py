"""The native data-plane listener: ``asyncio`` protocols over llhttp, same ``Exchange``/``Reply`` as aiohttp's.

It owns the listening socket, the set of live connections and their bound, the one ticker that
enforces their deadlines, and graceful shutdown (stop accepting, let answers finish to a
deadline, then cut what is left).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from ..core.config import DataPlaneListener
from ..core.errors import Unavailable
from ..core.lifecycle import UNLIMITED, open_file_limit
from .connection import Connection
from .envelope import error_reply
from .listener import next_request_id
from .router import Handler, Router
from .wire import reply_bytes

log = logging.getLogger("sluice.http")

_WARN_EVERY = 10.0  # seconds between two warnings that connections are being refused


def default_max_connections() -> int:
    """Half the process's open-file limit (at least 64): a flood of client connections must leave
    descriptors for the upstreams, the control plane and the store, or every request fails."""
    soft = open_file_limit()
    if soft is None:
        return 10_000
    return 100_000 if soft == UNLIMITED else max(64, soft // 2)


class NativeListener:
    """A plane on its own host and port, served by :class:`Connection` protocols."""

    write_high_water = 64 * 1024
    reuse_port = False  # True beside other workers on the same port (``sluice serve --workers N``)
    max_url_bytes = 8190  # aiohttp's request-line limit
    # mTLS: a connection's client certificate as this listener's rules read it (``identity.certs``), set by the app
    peer_cert: Callable[[ssl.SSLObject | None], object] | None = None

    def __init__(self, name: str, cfg: DataPlaneListener, routes: list[tuple[str, str, Handler]], *,
                 max_body_bytes: int, access_log: bool = False, ssl_context: ssl.SSLContext | None = None,
                 served: object | None = None) -> None:
        self.name = name
        # a named listener's gate (``identity.Served``), handed to every request it takes; None: serves everyone
        self.served = served
        self.ssl_context = ssl_context  # TLS on this listener (``tls.ServerTls.context``), None: plain HTTP
        self.host = cfg.host
        self.port = cfg.port
        self.router = Router(routes)
        self.max_body = max_body_bytes
        self.access_log = access_log
        self.keepalive_timeout = cfg.keepalive_timeout
        self.header_timeout = cfg.header_timeout
        self.body_timeout = cfg.body_timeout
        self.max_header_bytes = cfg.max_header_bytes
        self.max_header_field_bytes = cfg.max_header_field_bytes
        self.max_headers = cfg.max_headers
        self._shutdown_timeout = cfg.shutdown_timeout
        self.send_timeout = cfg.send_timeout
        self.max_connections = cfg.max_connections or default_max_connections()
        self.connections: set[Connection] = set()
        # refused connections still reading their 503; bounded too, past it they are cut at once
        self.shedding = 0
        self._warned = -_WARN_EVERY
        self.draining = False
        self.loop = asyncio.get_event_loop()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), self.host, self.port, backlog=4096, reuse_address=True,
            reuse_port=self.reuse_port or None, ssl=self.ssl_context,
            # a connection counts against max_connections only once its handshake is done: bound the wait
            ssl_handshake_timeout=self.header_timeout if self.ssl_context is not None else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = loop.call_later(1.0, self._tick)

    def refuse(self, transport: asyncio.Transport) -> bool:
        """A connection past ``max_connections``: answer 503 and close (True), or cut it at once
        (False) while too many refused ones are still lingering."""
        now = self.loop.time()
        if now - self._warned >= _WARN_EVERY:
            self._warned = now
            log.warning("%s plane at its bound of %d connections: new connections get 503", self.name,
                        self.max_connections)
        if self.shedding >= max(16, self.max_connections // 8):
            transport.abort()
            return False
        self.shedding += 1
        busy = Unavailable("The server has too many open connections; retry shortly.",
                           code="too_many_connections", retry_after=1.0)
        transport.write(reply_bytes(error_reply(busy), next_request_id(), False))
        if transport.can_write_eof():
            transport.write_eof()  # a client that only reads sees the end at once
        return True

    def _tick(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            conn.expire()
        for conn in [c for c in self.connections if 0.0 < c.write_deadline <= now]:
            conn.write_stalled(now)
        self._ticker = self.loop.call_later(1.0, self._tick)

    async def stop(self) -> None:
        """Stop accepting, let in-flight answers and streams finish to the deadline, then close."""
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = self.loop.time() + self._shutdown_timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.abort()
        if self._ticker is not None:
            self._ticker.cancel()
        self._server = None
