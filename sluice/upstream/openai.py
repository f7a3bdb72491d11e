"""OpenAI-compatible HTTP transport (vLLM, Ollama, llama.cpp server, OpenAI itself).

Pooled keep-alive connections, connect/read/total timeouts, the upstream key injected from
config. Errors are translated to typed gateway errors whose messages name no URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import aiohttp

from ..core.config import Upstream
from ..core.errors import UpstreamError, UpstreamTimeout
from .base import Transport, UpstreamReply, UpstreamStream, credentials
from .errors import too_large
from .tls import upstream_context


def _translate(exc: BaseException) -> Exception:
    if isinstance(exc, aiohttp.ConnectionTimeoutError):  # nothing was sent: limits refund it (pipeline.forward)
        return UpstreamTimeout("The upstream model server could not be reached in time.", code="upstream_connect_timeout")
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        return UpstreamTimeout("The upstream model server did not answer in time.")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("The upstream model server is unreachable.", code="upstream_unreachable")
    return UpstreamError("The upstream model server closed the connection unexpectedly.", code="upstream_disconnected")


_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, but no more than ``limit`` bytes of it (after decompression): past it, an error."""
    pieces, room = [], limit
    async for piece in resp.content.iter_any():
        room -= len(piece)
        if room < 0:
            raise too_large()
        pieces.append(piece)
    return b"".join(pieces)


class _AiohttpStream(UpstreamStream):
    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._resp.content
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout("The upstream stopped sending in the middle of the stream.", code="upstream_stream_stalled") from None
        except _ERRORS:
            raise UpstreamError("The upstream stream ended before it was complete.", code="upstream_stream_cut") from None
        finally:
            self._resp.release()

    def close(self) -> None:
        self._resp.close()


class OpenAITransport(Transport):
    """One backend at ``base_url``; paths are relative to it (``/chat/completions``)."""

    def __init__(self, cfg: Upstream) -> None:
        self.name = cfg.name
        self.api = cfg.api
        self._cfg = cfg
        self._base = cfg.base_url.rstrip("/")
        headers = {"Content-Type": "application/json", "Accept": "application/json", **cfg.headers}
        headers.update(credentials(cfg))
        self._headers = headers
        self._secret = cfg.api_key.encode() if cfg.api_key else None
        self._timeout = aiohttp.ClientTimeout(
            total=cfg.total_timeout, connect=cfg.connect_timeout, sock_read=cfg.read_timeout
        )
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        tls = upstream_context(self._cfg) if self._base.startswith("https:") else None
        connector = aiohttp.TCPConnector(
            limit=self._cfg.max_connections, limit_per_host=0, ttl_dns_cache=300,
            keepalive_timeout=self._cfg.idle_timeout, ssl=tls if tls is not None else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, headers=self._headers,
            skip_auto_headers=("User-Agent",), auto_decompress=True, trust_env=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def send(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> UpstreamReply:
        assert self._session is not None
        try:
            async with self._session.post(self._base + path, data=body, headers=headers) as resp:
                data = await _read(resp, self._cfg.max_response_bytes)
                if resp.status != 200:
                    return self._error_reply(resp.status, data, resp.headers.get("Retry-After"))
                return UpstreamReply(200, data)
        except _ERRORS as exc:
            raise _translate(exc) from None

    async def probe(self) -> bool | None:
        """``GET /models`` answers below 500 within the connect timeout: the server is up."""
        assert self._session is not None
        try:
            async with self._session.get(self._base + "/models", timeout=aiohttp.ClientTimeout(
                    total=self._cfg.connect_timeout + 1.0)) as resp:
                return resp.status < 500
        except _ERRORS:
            return False

    async def fetch(self, path: str) -> bytes | None:
        assert self._session is not None
        url = urlsplit(self._base)
        try:
            async with self._session.get(f"{url.scheme}://{url.netloc}{path}", timeout=aiohttp.ClientTimeout(
                    total=self._cfg.connect_timeout + 1.0)) as resp:
                return await _read(resp, 1 << 20) if resp.status == 200 else None
        except (*_ERRORS, UpstreamError):  # too large is an UpstreamError
            return None

    async def open_stream(self, path: str, body: bytes, headers: dict[str, str] | None = None
                          ) -> UpstreamStream | UpstreamReply:
        assert self._session is not None
        try:
            resp = await self._session.post(self._base + path, data=body, headers=headers)
        except _ERRORS as exc:
            raise _translate(exc) from None
        if resp.status != 200:
            try:
                data = await _read(resp, self._cfg.max_response_bytes)
            except _ERRORS as exc:
                raise _translate(exc) from None
            finally:
                resp.release()
            return self._error_reply(resp.status, data, resp.headers.get("Retry-After"))
        return _AiohttpStream(resp)

    def _error_reply(self, status: int, data: bytes, retry_after: str | None) -> UpstreamReply:
        # Some providers repeat the credential they were sent in their error message, and a
        # 400's message is relayed to the caller: our upstream key must never reach them.
        if self._secret is not None and self._secret in data:
            data = data.replace(self._secret, b"[redacted]")
        return UpstreamReply(status, data, retry_after)
