"""The MCP gateway for one server path (``/mcp/{server}``): sessions, the methods it answers, the policy on each call.

The caller is already authenticated (its sluice key or token). ``initialize`` seals a new session
into its id; every other request needs that id back, opened for the same identity and server.
``tools/list`` shows the upstream's tools by their namespaced names, only those the registry lets
the caller call; ``tools/call`` is judged by the same registry as a model's tool call (allowed,
refused with a JSON-RPC error that says why, or held for approval), sent upstream on sluice's own
session with the server, and its result bounded and read by the detectors before it goes back.

An approved call is redeemed by sending the same ``tools/call`` again with the approval id in
``_meta["sluice/approval"]``: the approval is used (once, for exactly the approved arguments, by
``ToolApprovals.redeem``) and the call runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import mcp.types as mt
from mcp.shared.exceptions import MCPError
from mcp_types.methods import parse_client_request, serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError

from ..core import clock, scope
from ..core.errors import GatewayError
from ..core.mcp_config import Mcp
from ..guard import Judgement, ToolApprovals, context_digest
from ..guard.approvals import MASK
from ..guard.tools import masked_args
from ..identity import Principal
from .authz import ToolAccess, namespaced, upstream_name
from .jsonrpc import NO_SESSION, REFUSED, UPSTREAM, Refusal
from .pins import Pins
from .results import guard_result
from .session import Session, Sessions
from .upstreams import Upstream, Upstreams

log = logging.getLogger("sluice.mcp")
APPROVAL_META = "sluice/approval"
SESSION_HEADER = "Mcp-Session-Id"
METHODS = frozenset({"initialize", "ping", "tools/list", "tools/call"})


class Answer:
    """What one POST gets back: a JSON-RPC result or error (None for a notification: 202), and headers."""

    __slots__ = ("result", "headers")

    def __init__(self, result: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
        self.result = result
        self.headers = headers


class McpGateway:
    """Answers MCP requests of authenticated callers for each configured server."""

    def __init__(self, cfg: Mcp, upstreams: Upstreams, sessions: Sessions, approvals: ToolApprovals,
                 active: Callable[[], Any], record_change: Callable[[Any], Any] | None = None) -> None:
        self._cfg = cfg
        self.upstreams = upstreams
        self.sessions = sessions
        self._approvals = approvals
        self._active = active  # the active policy version (``.guard``, ``.version``, ``.hash``)
        self._access = self.access = ToolAccess(lambda: getattr(active(), "guard", None))
        # issue 25 item 5: definitions pinned in the active version's ``mcp`` section; others quarantined
        self.pins = Pins(lambda: getattr(getattr(active(), "document", None), "mcp", None), cfg.pin_recheck_s,
                         record_change)

    def server(self, name: str) -> Upstream:
        up = self.upstreams.get(name)
        if up is None:
            raise Refusal(mt.INVALID_REQUEST, "No such MCP server.", "unknown_server", 404)
        return up

    def session(self, who: Principal, server: str, session_id: str | None) -> Session:
        if not session_id:
            raise Refusal(mt.INVALID_REQUEST, f"Send the {SESSION_HEADER} header that initialize returned.",
                          "missing_session", 400)
        got = self.sessions.open(session_id, who.identity_id, server)
        if got is None:  # unknown, expired, ended, or another identity's: all look the same
            raise Refusal(NO_SESSION, "No such session; initialize a new one.", "unknown_session", 404)
        return got

    async def request(self, who: Principal, server: str, msg: mt.JSONRPCRequest, session_id: str | None,
                      request_id: str) -> Answer:
        up = self.server(server)
        method = msg.method
        if method not in METHODS:
            raise Refusal(mt.METHOD_NOT_FOUND, f"Method not found: {method[:64]}.", "method_not_found")
        if method == "initialize":
            return self._initialize(who, server, msg.params)
        session = self.session(who, server, session_id)
        try:
            req = parse_client_request(method, session.protocol, msg.params)
        except (ValidationError, KeyError, ValueError):
            raise Refusal(mt.INVALID_PARAMS, f"Invalid params for {method}.", "invalid_params") from None
        if isinstance(req, mt.PingRequest):
            out: dict[str, Any] = {}
        elif isinstance(req, mt.ListToolsRequest):
            out = await self._list_tools(who, up)
        elif isinstance(req, mt.CallToolRequest):
            out = await self._call_tool(who, up, server, req.params, request_id)
        else:
            raise Refusal(mt.METHOD_NOT_FOUND, f"Method not found: {method[:64]}.", "method_not_found")
        try:  # in the wire shape of the session's protocol version (fields it does not know are dropped)
            return Answer(serialize_server_result(method, session.protocol, out))
        except ValidationError:
            raise Refusal(UPSTREAM, f"The upstream's answer to {method} is not valid MCP.", "mcp_upstream_invalid") from None

    def _initialize(self, who: Principal, server: str, params: dict[str, Any] | None) -> Answer:
        asked = (params or {}).get("protocolVersion")
        version = asked if asked in HANDSHAKE_PROTOCOL_VERSIONS else LATEST_HANDSHAKE_VERSION
        try:
            req = parse_client_request("initialize", version, params)
        except (ValidationError, KeyError, ValueError):
            raise Refusal(mt.INVALID_PARAMS, "Invalid params for initialize.", "invalid_params", 400) from None
        assert isinstance(req, mt.InitializeRequest)
        client = req.params.client_info.name if req.params.client_info is not None else ""
        sid = self.sessions.begin(who.identity_id, server, version, client)
        result = mt.InitializeResult(
            protocol_version=version, capabilities=mt.ServerCapabilities(tools=mt.ToolsCapability(list_changed=False)),
            server_info=mt.Implementation(name=f"sluice/{server}", version="0.1.0"),
            instructions=f"Tools of the MCP server {server!r}, governed by sluice: names are `{self.server(server).namespace}__tool`.")
        return Answer(result.model_dump(mode="json", by_alias=True, exclude_none=True), {SESSION_HEADER: sid})

    async def _list_tools(self, who: Principal, up: Upstream) -> dict[str, Any]:
        try:
            tools = await up.list_tools()
        except MCPError as exc:
            raise _upstream_refusal(exc) from None
        tools = await self.pins.screen(up.spec.name, up.namespace, tools)  # quarantined tools are hidden
        shown = []
        for tool in tools:
            name = namespaced(up.namespace, tool.name)
            if self._access.visible(name, who.identity_name, who.team):
                shown.append(tool.model_copy(update={"name": name}))
        return mt.ListToolsResult(tools=shown).model_dump(mode="json", by_alias=True, exclude_none=True)

    async def _call_tool(self, who: Principal, up: Upstream, server: str, params: mt.CallToolRequestParams,
                         request_id: str) -> dict[str, Any]:
        name, arguments = params.name, dict(params.arguments or {})
        tool = upstream_name(up.namespace, name)
        if tool is None:
            raise Refusal(mt.INVALID_PARAMS, f"Unknown tool {name[:64]!r}: this server's tools are named "
                                             f"`{up.namespace}__<tool>`.", "unknown_tool")
        try:  # a quarantined tool (definition unpinned or changed) is refused before anything else
            await self.pins.check_call(up.spec.name, up.namespace, tool, up.list_tools)
        except MCPError as exc:
            raise _upstream_refusal(exc) from None
        judgement = self._access.judge(name, arguments, who.identity_name, who.team)
        if judgement is not None:
            self._record(who, judgement, server, request_id)
            if judgement.verdict == "block":
                raise Refusal(REFUSED, f"The call to {name[:64]} is refused by the gateway's policy: {judgement.reason}.",
                              "tool_refused", data={"reason": judgement.reason})
            if judgement.verdict == "hold":
                approval = (params.meta or {}).get(APPROVAL_META)  # type: ignore[union-attr]
                if approval is None:
                    return await self._hold(who, judgement, server, request_id)
                await self._redeem(who, str(approval), name, arguments, request_id)
        try:
            result = await up.call_tool(tool, arguments)
        except MCPError as exc:
            raise _upstream_refusal(exc) from None
        p = self._access.registry()
        try:
            return guard_result(result, max_bytes=self._cfg.max_result_bytes, policy=p or getattr(self._active(), "guard", None),
                                identity=who.identity_name, team=who.team, tool=name, request_id=request_id)
        except GatewayError as exc:
            raise Refusal(UPSTREAM, exc.message, exc.code or "mcp_upstream_error") from None

    async def _hold(self, who: Principal, j: Judgement, server: str, request_id: str) -> dict[str, Any]:
        guard = getattr(self._active(), "guard", None)
        ttl = guard.rules_for(frozenset(), who.identity_name, who.team).spec.tools.approval_ttl_s if guard else 900.0
        try:
            approval = await self._approvals.hold(j, identity_id=who.identity_id, identity_name=who.identity_name,
                                                  request_id=request_id, model=f"mcp:{server}",
                                                  context=context_digest({"mcp": server, "tool": j.call.name}), ttl_s=ttl)
        except GatewayError as exc:
            raise Refusal(REFUSED, exc.message, exc.code or "approval_refused") from None
        text = (f"[sluice] The call to `{j.call.name[:64]}` needs approval (approval id {approval}); it did not run. "
                f"Once an operator approves it, send the same tools/call with the same arguments and "
                f'_meta {{"{APPROVAL_META}": "{approval}"}}: it runs once.')
        return mt.CallToolResult(content=[mt.TextContent(type="text", text=text)], is_error=True,
                                 _meta={APPROVAL_META: {"id": approval, "status": "pending"}}).model_dump(
            mode="json", by_alias=True, exclude_none=True)

    async def _redeem(self, who: Principal, approval: str, name: str, arguments: dict[str, Any], request_id: str) -> None:
        current = scope.request.set((request_id, None))  # cited by the redemption's audit entry
        try:
            row = await self._approvals.get(approval, who.identity_id)
            if row["tool"] != name[:64]:
                raise Refusal(REFUSED, "That approval is for another tool.", "approval_tool_mismatch")
            await self._approvals.redeem(approval, who.identity_id, who.identity_name, arguments)
        except GatewayError as exc:
            raise Refusal(REFUSED, exc.message, exc.code or "approval_refused") from None
        finally:
            scope.request.reset(current)

    def _record(self, who: Principal, j: Judgement, server: str, request_id: str) -> None:
        active = self._active()
        self._approvals.record([{
            "ts": clock.now(), "request_id": request_id, "identity_id": who.identity_id, "model": f"mcp:{server}",
            "context_digest": context_digest({"mcp": server, "tool": j.call.name}), "tool": j.call.name[:64],
            "call_id": j.call.id[:128], "decision": j.verdict, "reason": j.reason[:256],
            "args_masked": masked_args(j.canonical or j.call.arguments, MASK), "args_sha256": j.args_sha256,
            "approval_id": j.approval_id, "approver": None, "policy_version": getattr(active, "version", None),
            "policy_hash": getattr(active, "hash", None)}])


def _upstream_refusal(exc: MCPError) -> Refusal:
    """The upstream's own JSON-RPC error, its message read by the detectors (a server may echo a secret)."""
    return Refusal(exc.code if -32768 <= exc.code <= -32000 else UPSTREAM, MASK.mask(str(exc.error.message)[:1024]),
                   "mcp_upstream_error")
