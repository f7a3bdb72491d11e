"""The MCP routes of the data plane, over Streamable HTTP: ``POST``/``DELETE /mcp`` (every server federated) and
``/mcp/{server}``, and the OAuth metadata of each (``/.well-known/oauth-protected-resource/mcp[/{server}]``).

A POST carries one JSON-RPC message and is answered ``application/json`` (a notification or a
response: 202, no body). There is no server-to-client stream: ``GET`` is not routed, so it is the
router's 405, which the transport allows a server that offers none. ``DELETE`` ends the session.
Authentication is the data plane's own (a sluice key or access token); a 401 names the RFC 9728
protected-resource metadata of the path it was refused on, which this module serves (public), naming
sluice itself as the authorization server whose token endpoint is ``/v1/token`` (RFC 8693).
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable

import mcp.types as mt

from ..core.errors import GatewayError, NotFound
from ..core.exchange import Exchange, Reply
from ..core.mcp_config import Mcp
from ..identity import Principal
from . import jsonrpc
from .gateway import FEDERATED, SESSION_HEADER, McpGateway
from .jsonrpc import Refusal

METADATA = "/.well-known/oauth-protected-resource"
AUTH_SERVER = "/.well-known/oauth-authorization-server"
_HOST = re.compile(r"^[A-Za-z0-9.\-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"


class McpEndpoints:
    """The handlers; ``identify`` is the data plane's Authenticate stage over an exchange."""

    def __init__(self, identify: Callable[[Exchange, str], Awaitable[Principal]], gateway: McpGateway, cfg: Mcp) -> None:
        self._identify = identify
        self._gateway = gateway
        self._public = cfg.public_url.rstrip("/") if cfg.public_url else None

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
            if not isinstance(msg, mt.JSONRPCRequest):  # notifications, and answers to requests we never send
                self._gateway.server(server)
                return Reply(202, b"")
            msg_id = msg.id
            answer = await self._gateway.request(who, server, msg, exchange.headers.get(SESSION_HEADER),
                                                 exchange.request_id, exchange.headers)
            return Reply(200, jsonrpc.result(msg_id, answer.result or {}), headers=answer.headers)
        except Refusal as r:
            return Reply(r.status, jsonrpc.error(msg_id, r), headers=r.headers)

    async def delete(self, exchange: Exchange) -> Reply:
        try:
            who = await self._who(exchange)
            server = exchange.params.get("server", FEDERATED)
            self._gateway.server(server)
            sid = exchange.headers.get(SESSION_HEADER)
            session = await self._gateway.session(who, server, sid)
            await self._gateway.sessions.end(sid, session)  # type: ignore[arg-type]  # session() checked it
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
        return [("POST", "/mcp", self.post), ("DELETE", "/mcp", self.delete),
                ("POST", "/mcp/{server}", self.post), ("DELETE", "/mcp/{server}", self.delete),
                ("GET", METADATA + "/mcp", self.resource_metadata), ("GET", METADATA + "/mcp/{server}", self.resource_metadata),
                ("GET", AUTH_SERVER, self.server_metadata)]


_SEGMENT = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
