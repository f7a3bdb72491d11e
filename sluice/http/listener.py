"""The control plane's HTTP listener (aiohttp on uvloop): routes to handlers that speak
``Exchange``/``Reply``. (The data plane has its own server, ``server.NativeListener``.)

Every answer, including 404, 405, 413, 431 and anything unexpected, is an OpenAI-shaped
error with an ``x-request-id``; nothing unexpected leaves as a stack trace. A body over the
plane's limit is refused from its declared length before it is read.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..core.ids import unique_id
from ..core.errors import GatewayError, NotFound, PayloadTooLarge, Unauthenticated
from ..core.exchange import Exchange, Reply, StreamReply
from .envelope import error_reply, to_response
from .protocol import HANDLER_ARGS, EnvelopeRunner
from .router import Router
from .tls import Untrusted

log = logging.getLogger("sluice.http")

Handler = Callable[[Exchange], Awaitable[Reply | StreamReply]]
Route = tuple[str, str, Handler]

def next_request_id() -> str:
    """Unique across runs and replicas (the usage table's idempotency key), and cheap (``core.ids``)."""
    return unique_id("req")


class Listener:
    """A named plane (data or control) on its own host and port."""

    reuse_port = False  # True beside other workers on the same port (``sluice serve --workers N``)
    # mTLS: raises for a connection whose client certificate no configured CA vouches for now (``tls.ServerTls.peer``)
    peer_check: Callable[[ssl.SSLObject | None], object] | None = None

    def __init__(self, name: str, host: str, port: int, routes: list[Route], *, max_body_bytes: int,
                 access_log: bool = False, shutdown_timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.ssl_context = ssl_context  # TLS on this listener (``tls.ServerTls.context``), None: plain HTTP
        self.host = host
        self.port = port
        self._routes = routes
        self._max_body = max_body_bytes
        self._access_log = access_log
        self._shutdown_timeout = shutdown_timeout
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=self._max_body + 1, handler_args=HANDLER_ARGS)
        for method, path, handler in self._routes:
            app.router.add_route(method, path, self._wrap(handler))
        # aiohttp hands a wrong method to the catch-all below; the native server's router then
        # says 405 with Allow, for {name} paths as for exact ones, or 404
        router = Router(self._routes)

        async def fallback(request: web.Request) -> web.Response:
            exc: GatewayError = NotFound(f"Unknown request URL: {request.method} {request.path[:200]}.", code="unknown_url")
            try:
                router.resolve(request.method, request.path)
            except GatewayError as refused:
                exc = refused
            return to_response(error_reply(exc), next_request_id())

        app.router.add_route("*", "/{tail:.*}", fallback)
        return app

    def _wrap(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        max_body = self._max_body

        async def serve(request: web.Request) -> web.StreamResponse:
            rid = next_request_id()
            try:
                if self.peer_check is not None and request.transport is not None:
                    try:
                        self.peer_check(request.transport.get_extra_info("ssl_object"))
                    except Untrusted:
                        raise Unauthenticated("The client certificate is no longer trusted here.",
                                              code="invalid_client_certificate") from None
                if request.body_exists:
                    size = request.content_length
                    if size is not None and size > max_body:
                        raise PayloadTooLarge(f"The request body exceeds {max_body} bytes.")
                    try:
                        body = await request.read()
                    except web.HTTPRequestEntityTooLarge:
                        raise PayloadTooLarge(f"The request body exceeds {max_body} bytes.") from None
                else:
                    body = b""
                exchange = Exchange(request.method, request.path, request.match_info, request.query,
                                    request.headers, body, request.remote, rid)
                reply = await handler(exchange)
            except GatewayError as exc:
                return to_response(error_reply(exc), rid)
            except (asyncio.CancelledError, ConnectionResetError):
                raise
            except Exception as exc:  # the last line of defence: log the type, show nothing inside
                log.error("unhandled error on %s %s: %s", request.method, request.path, type(exc).__name__)
                return to_response(error_reply(GatewayError("The server had an error processing your request.", code="internal_error")), rid)
            return to_response(reply, rid)  # type: ignore[arg-type]  # no control-plane handler streams

        return serve

    async def start(self) -> None:
        self._runner = EnvelopeRunner(
            self._app(), access_log=log if self._access_log else None, shutdown_timeout=self._shutdown_timeout,
            handle_signals=False,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096, reuse_address=True,
                           reuse_port=self.reuse_port or None, ssl_context=self.ssl_context)
        await site.start()
        server = site._server  # the bound port when 0 was asked for
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
