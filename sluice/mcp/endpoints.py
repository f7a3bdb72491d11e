"""The MCP routes of the data plane, over Streamable HTTP: ``POST``/``DELETE /mcp`` (every server federated) and
``/mcp/{server}``, and the OAuth metadata of each (``/.well-known/oauth-protected-resource/mcp[/{server}]``).

A POST carries one JSON-RPC message and is answered ``application/json`` (a notification or a
response: 202, no body), or, when its ``Accept`` prefers ``text/event-stream`` to JSON (or lists only
that), as an SSE stream carrying the one response. ``GET`` with the session's id opens the
server-to-client stream of list_changed notifications (``notify.py``). ``DELETE`` ends the session
(and its streams on this replica).
Authentication is the data plane's own (a sluice key or access token); a 401 names the RFC 9728
protected-resource metadata of the path it was refused on, which this module serves (public), naming
sluice itself as the authorization server whose token endpoint is ``/v1/token`` (RFC 8693).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import mcp.types as mt

from ..core.errors import GatewayError, NotFound
from ..core.exchange import SSE_TYPE, Exchange, Reply, StreamReply
from ..core.mcp_config import Mcp
from ..identity import Principal
from . import jsonrpc
from .gateway import FEDERATED, SESSION_HEADER, McpGateway
from .jsonrpc import Refusal
from .fanout import Fanout
from .notify import Streams
from .session import Sessions

METADATA = "/.well-known/oauth-protected-resource"
AUTH_SERVER = "/.well-known/oauth-authorization-server"
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


class McpEndpoints:
    """The handlers; ``identify`` is the data plane's Authenticate stage over an exchange."""

    def __init__(self, identify: Callable[[Exchange, str], Awaitable[Principal]], gateway: McpGateway, cfg: Mcp,
                 streams: Streams | None = None, fanout: Fanout | None = None) -> None:
        """``fanout``: the other replicas (Redis), for resource subscriptions across replicas (``fanout.py``)."""
        self._identify = identify
        self._gateway = gateway
        self._public = cfg.public_url.rstrip("/") if cfg.public_url else None
        self.streams = streams or Streams(cfg.streams)
        subscriptions = gateway.subscriptions
        self.streams.subscribed = subscriptions.subscribed  # resources/updated: to the sessions subscribed
        if fanout is not None:
            self.streams.fanout = subscriptions.fanout = fanout

            def heard(message: dict) -> Any:
                self.streams.heard(message)
                return subscriptions.heard(message)
            fanout.on_message = heard

    def _base(self, exchange: Exchange) -> str:
        if self._public is not None:
            return self._public
        host = exchange.headers.get("Host") or ""
        return f"http://{host if _HOST.match(host) else 'localhost'}"

    @staticmethod
    def _path(exchange: Exchange) -> str:
        server = exchange.params.get("server")
        return "/mcp" if server is None else f"/mcp/{server if _SEGMENT.match(server) else ''}"

    def serves(self, exchange: Exchange, resource: str) -> bool:
        """Whether ``resource`` is the canonical URI of one of these endpoints, as seen from this request (the
        token endpoint asks, to mint a token for it: RFC 8707)."""
        base = self._base(exchange)
        if resource == f"{base}/mcp":
            return True
        server = resource[len(base) + 5:] if resource.startswith(f"{base}/mcp/") else ""
        return self._gateway.upstreams.get(server) is not None

    async def _who(self, exchange: Exchange) -> Principal:
        """The caller; an access token must have been minted for this endpoint's canonical URI (RFC 8707),
        a key carries no audience. 401 names the path's protected-resource metadata; 403: no invoker role."""
        path = self._path(exchange)
        try:
            return await self._identify(exchange, f"{self._base(exchange)}{path}")
        except GatewayError as exc:
            headers = dict(exc.headers or {})
            if exc.retry_after is not None:
                headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
            if exc.status == 401:
                headers["WWW-Authenticate"] = f'Bearer resource_metadata="{self._base(exchange)}{METADATA}{path}"'
            raise Refusal(mt.INVALID_REQUEST, exc.message, exc.code or "unauthenticated", exc.status, headers) from None

    async def post(self, exchange: Exchange) -> Reply:
        msg_id = None
        server = exchange.params.get("server", FEDERATED)
        try:
            who = await self._who(exchange)
            msg = jsonrpc.parse(exchange.body)
            if not isinstance(msg, jsonrpc.REQUESTS):  # notifications, and answers to requests we never send
                self._gateway.server(server)
                return Reply(202, b"")
            msg_id = msg.id
            answer = await self._gateway.request(who, server, msg, exchange.headers.get(SESSION_HEADER),
                                                 exchange.request_id, exchange.headers)
            return _answer(exchange, 200, jsonrpc.result(msg_id, answer.result or {}), answer.headers)
        except Refusal as r:
            return _answer(exchange, r.status, jsonrpc.error(msg_id, r), r.headers)

    async def get(self, exchange: Exchange) -> Reply | StreamReply:
        """The server-to-client stream of a session (``notify.py``): list_changed notifications, keep-alives."""
        try:
            who = await self._who(exchange)
            server = exchange.params.get("server", FEDERATED)
            self._gateway.server(server)
            if not self.streams.offered:
                raise Refusal(mt.INVALID_REQUEST, "This gateway offers no server-to-client stream.", "method_not_allowed",
                              405, {"Allow": "POST, DELETE"})
            if not _accepts(exchange.headers.get("Accept"), SSE_TYPE):
                raise Refusal(mt.INVALID_REQUEST, "The stream is text/event-stream: send Accept: text/event-stream.",
                              "not_acceptable", 406)
            sid = exchange.headers.get(SESSION_HEADER)
            await self._gateway.session(who, server, sid)
            assert sid is not None  # session() refuses a missing one

            async def still_valid() -> bool:
                try:
                    return await self._gateway.sessions.open(sid, who.identity_id, server) is not None
                except Refusal:  # the store cannot say now: keep the stream, ask again at the next keep-alive
                    return True

            return self.streams.open(who.identity_id, server, sid, still_valid)
        except Refusal as r:
            return Reply(r.status, jsonrpc.error(None, r), headers=r.headers)

    async def delete(self, exchange: Exchange) -> Reply:
        try:
            who = await self._who(exchange)
            server = exchange.params.get("server", FEDERATED)
            self._gateway.server(server)
            sid = exchange.headers.get(SESSION_HEADER)
            session = await self._gateway.session(who, server, sid)
            await self._gateway.sessions.end(sid, session)  # type: ignore[arg-type]  # session() checked it
            self.streams.end_session(sid)  # type: ignore[arg-type]
            await self._gateway.subscriptions.end_session(Sessions.digest(sid))  # type: ignore[arg-type]
            return Reply.json({})
        except Refusal as r:
            return Reply(r.status, jsonrpc.error(None, r), headers=r.headers)

    async def resource_metadata(self, exchange: Exchange) -> Reply:
        """RFC 9728 for one endpoint (``/mcp`` or ``/mcp/{server}``, each at its own path): its canonical URI and
        the authorization server that issues tokens for it."""
        server = exchange.params.get("server")
        if server is not None and self._gateway.upstreams.get(server) is None:
            raise NotFound("No such MCP server.", code="unknown_server")
        base = self._base(exchange)
        path, name = ("/mcp", "every server") if server is None else (f"/mcp/{server}", server)
        return Reply.json({"resource": f"{base}{path}", "authorization_servers": [base],
                           "bearer_methods_supported": ["header"], "resource_name": f"sluice MCP gateway: {name}"},
                          headers={"Cache-Control": "public, max-age=300"})

    async def server_metadata(self, exchange: Exchange) -> Reply:
        """RFC 8414: sluice issues its own access tokens by token exchange (a key or a workload token)."""
        base = self._base(exchange)
        return Reply.json({"issuer": base, "token_endpoint": f"{base}/v1/token", "jwks_uri": f"{base}/.well-known/jwks.json",
                           "grant_types_supported": [TOKEN_EXCHANGE], "token_endpoint_auth_methods_supported": ["none"]},
                          headers={"Cache-Control": "public, max-age=300"})

    def routes(self) -> list[tuple[str, str, object]]:
        return [("POST", "/mcp", self.post), ("GET", "/mcp", self.get), ("DELETE", "/mcp", self.delete),
                ("POST", "/mcp/{server}", self.post), ("GET", "/mcp/{server}", self.get),
                ("DELETE", "/mcp/{server}", self.delete),
                ("GET", METADATA + "/mcp", self.resource_metadata), ("GET", METADATA + "/mcp/{server}", self.resource_metadata),
                ("GET", AUTH_SERVER, self.server_metadata)]


_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _media(accept: str | None) -> dict[str, float]:
    """An Accept header as media range -> q (a range listed twice keeps its higher q)."""
    out: dict[str, float] = {}
    for part in (accept or "").split(",")[:32]:
        kind, *params = part.strip().lower().split(";")
        q = 1.0
        for p in params:
            name, _, value = p.strip().partition("=")
            if name == "q":
                try:
                    q = min(1.0, max(0.0, float(value)))
                except ValueError:
                    q = 0.0
        if kind:
            out[kind] = max(q, out.get(kind, 0.0))
    return out


def _accepts(accept: str | None, kind: str) -> bool:
    """Whether this Accept allows ``kind`` (no Accept allows anything)."""
    if not accept:
        return True
    m = _media(accept)
    return max(m.get(kind, 0.0), m.get(kind.split("/")[0] + "/*", 0.0), m.get("*/*", 0.0)) > 0.0


def _prefers_stream(accept: str | None) -> bool:
    """An SSE answer to a POST: only when the caller ranks text/event-stream above JSON (equal: JSON)."""
    if not accept or "event-stream" not in accept or ("application/json" in accept and "q=" not in accept):
        return False  # no stream asked for, or JSON at the same rank (what the SDK's client sends)
    m = _media(accept)
    sse = max(m.get(SSE_TYPE, 0.0), m.get("text/*", 0.0))
    return sse > 0.0 and sse > max(m.get("application/json", 0.0), m.get("application/*", 0.0), m.get("*/*", 0.0))


def _answer(exchange: Exchange, status: int, body: bytes, headers: dict[str, str] | None) -> Reply:
    """A POST's answer: JSON, or one SSE event carrying the same JSON-RPC message when the caller prefers a
    stream (a JSON-RPC answer only: an HTTP refusal of the request itself stays JSON with its status)."""
    if status == 200 and _prefers_stream(exchange.headers.get("Accept")):
        return Reply(200, b"event: message\ndata: " + body + b"\n\n", SSE_TYPE, headers)
    return Reply(status, body, headers=headers)
