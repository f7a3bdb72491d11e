"""The native OpenAI-compatible transport: pooled protocol connections instead of aiohttp's client.

Same contract as ``OpenAITransport``: POST a body to ``base_url + path``, a complete reply or
a stream, every failure a typed gateway error whose message names no URL. The request head
that never changes (host, credentials, configured headers) is built once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from ..core.config import Upstream
from ..core.errors import Unavailable, UpstreamError, UpstreamTimeout
from .base import Transport, UpstreamReply, UpstreamStream, credentials
from .connection import Cut, Stalled, TooLarge, UpstreamConnection
from .errors import too_large
from .pool import Pool, PoolTimeout
from .probe import answers, fetch
from .tls import upstream_context


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, (Stalled, asyncio.TimeoutError)):
        return UpstreamTimeout("The upstream model server did not answer in time.")
    if isinstance(exc, PoolTimeout):
        return Unavailable("Too many requests are waiting for this upstream; retry later.",
                           code="upstream_busy", retry_after=1.0)
    if isinstance(exc, TooLarge):
        return too_large()
    if isinstance(exc, OSError):  # refused, no route, TLS verification failed
        return UpstreamError("The upstream model server is unreachable.", code="upstream_unreachable")
    return UpstreamError("The upstream model server closed the connection unexpectedly.", code="upstream_disconnected")


def _tick(read_timeout: float, total_timeout: float) -> float:
    """How often the pool checks deadlines: an eighth of the shorter timeout (a timeout fires at most
    12.5% late), between 10 ms and 1 s."""
    return min(1.0, max(0.01, min(read_timeout, total_timeout) / 8))


class _NativeStream(UpstreamStream):
    __slots__ = ("_conn", "_pool")

    def __init__(self, conn: UpstreamConnection, pool: Pool) -> None:
        self._conn: UpstreamConnection | None = conn
        self._pool = pool

    async def chunks(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                piece = await conn.read()
                if not piece:
                    break
                yield piece
        except Stalled:
            raise UpstreamTimeout("The upstream stopped sending in the middle of the stream.",
                                  code="upstream_stream_stalled") from None
        except Cut:
            raise UpstreamError("The upstream stream ended before it was complete.", code="upstream_stream_cut") from None
        self._conn = None
        self._pool.release(conn)  # whole response read: the connection may carry another

    def ready(self) -> bool:
        conn = self._conn
        return conn is None or conn.ready()

    def close(self) -> None:
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close()
            self._pool.release(conn)


class NativeTransport(Transport):
    """One backend at ``base_url`` over a bounded pool of kept-alive connections."""

    def __init__(self, cfg: Upstream) -> None:
        self.name = cfg.name
        self.api = cfg.api
        url = urlsplit(cfg.base_url)
        tls = url.scheme == "https"
        host = url.hostname or "127.0.0.1"
        port = url.port or (443 if tls else 80)
        self._prefix = url.path.rstrip("/").encode()
        default_port = port == (443 if tls else 80)
        headers = {"Host": host if default_port else f"{host}:{port}", "Content-Type": "application/json",
                   "Accept": "application/json", **cfg.headers}
        headers.update(credentials(cfg))
        self._head = "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")
        self._secret = cfg.api_key.encode() if cfg.api_key else None
        self._read_timeout = cfg.read_timeout
        self._total = cfg.total_timeout
        self._max_response = cfg.max_response_bytes
        ssl_context = upstream_context(cfg) if tls else None
        self._pool = Pool(host, port, ssl_context=ssl_context,
                          limit=cfg.max_connections, connect_timeout=cfg.connect_timeout,
                          pool_timeout=cfg.pool_timeout, idle_timeout=cfg.idle_timeout,
                          tick=_tick(cfg.read_timeout, cfg.total_timeout))
        self._loop: asyncio.AbstractEventLoop | None = None
        # (host, port, TLS context or None, timeout) of the active health check (``probe``)
        self._probe_at = (host, port, ssl_context, cfg.connect_timeout + 1.0)

    @property
    def pool(self) -> Pool:
        """The connection pool (its size is observable in tests and metrics)."""
        return self._pool

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._pool.start()

    async def close(self) -> None:
        self._pool.close()

    def _request(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
        extra = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in headers.items()) if headers else b""
        return b"".join((b"POST ", self._prefix, path.encode(), b" HTTP/1.1\r\n", self._head, extra,
                         b"Content-Length: %d\r\n\r\n" % len(body), body))

    async def _exchange(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> UpstreamConnection:
        """Send the request on a pooled connection and wait for the response head."""
        loop = self._loop
        assert loop is not None
        deadline = loop.time() + self._total
        pool = self._pool
        conn = pool.take_idle()
        if conn is None:
            try:
                conn = await pool.acquire()
            except Exception as exc:
                raise _translate(exc) from None
        request = self._request(path, body, headers)
        conn.send(request, self._read_timeout, deadline)
        try:
            await conn.head()
        except BaseException as exc:
            self._pool.release(conn)
            if isinstance(exc, Exception):
                raise _translate(exc) from None
            raise
        return conn

    async def _read_all(self, conn: UpstreamConnection) -> bytes:
        try:
            pieces = await conn.read_all(self._max_response)
        except Exception as exc:
            raise _translate(exc) from None
        finally:
            self._pool.release(conn)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def send(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> UpstreamReply:
        conn = await self._exchange(path, body, headers)
        status, retry_after = conn.status, conn.retry_after
        data = conn.take_body()  # the whole reply came with its head (nearly always): no read loop
        if data is not None:
            self._pool.release(conn)
            if len(data) > self._max_response:
                raise too_large()
        else:
            data = await self._read_all(conn)
        if status != 200:
            return self._error_reply(status, data, retry_after)
        return UpstreamReply(status, data, retry_after)

    async def probe(self) -> bool | None:
        """``GET /models`` answers below 500 within the connect timeout: the server is up."""
        host, port, tls, timeout = self._probe_at
        return await answers(host, port, tls, b"".join((
            b"GET ", self._prefix, b"/models HTTP/1.1\r\n", self._head, b"Connection: close\r\n\r\n")), timeout)

    async def fetch(self, path: str) -> bytes | None:
        host, port, tls, timeout = self._probe_at
        return await fetch(host, port, tls, b"".join((
            b"GET ", path.encode(), b" HTTP/1.1\r\n", self._head, b"Connection: close\r\n\r\n")), timeout)

    async def open_stream(self, path: str, body: bytes, headers: dict[str, str] | None = None
                          ) -> UpstreamStream | UpstreamReply:
        conn = await self._exchange(path, body, headers)
        if conn.status != 200:
            status, retry_after = conn.status, conn.retry_after
            return self._error_reply(status, await self._read_all(conn), retry_after)
        return _NativeStream(conn, self._pool)

    def _error_reply(self, status: int, data: bytes, retry_after: str | None) -> UpstreamReply:
        # As OpenAITransport: a provider that repeats the credential it was sent in its error
        # message must not hand our upstream key to the caller (a 400's message is relayed).
        if self._secret is not None and self._secret in data:
            data = data.replace(self._secret, b"[redacted]")
        return UpstreamReply(status, data, retry_after)
