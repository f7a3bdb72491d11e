"""The native data-plane listener: ``asyncio`` protocols over llhttp, same ``Exchange``/``Reply`` as aiohttp's.

It owns the listening socket, the set of live connections, the one ticker that enforces
their deadlines, and graceful shutdown (stop accepting, let answers finish to a deadline,
then cut what is left).
"""

from __future__ import annotations

import asyncio
import logging

from ..core.config import DataPlaneListener
from .connection import Connection
from .router import Handler, Router

log = logging.getLogger("sluice.http")

class NativeListener:
    """A plane on its own host and port, served by :class:`Connection` protocols."""

    write_high_water = 64 * 1024
    reuse_port = False  # True beside other workers on the same port (``sluice serve --workers N``)
    max_url_bytes = 8190  # aiohttp's request-line limit

    def __init__(self, name: str, cfg: DataPlaneListener, routes: list[tuple[str, str, Handler]], *,
                 max_body_bytes: int, access_log: bool = False) -> None:
        self.name = name
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
        self.connections: set[Connection] = set()
        self.draining = False
        self.loop = asyncio.get_event_loop()
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection(self), self.host, self.port, backlog=4096, reuse_address=True,
            reuse_port=self.reuse_port or None,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = loop.call_later(1.0, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        for conn in [c for c in self.connections if 0.0 < c.deadline <= now]:
            conn.expire()
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
