"""The MCP gateway for each server path (``/mcp/{server}``) and the federated one (``/mcp``): sessions, the methods
it answers, the policy, limits and record of each call.

``/mcp`` puts every configured server behind one endpoint: ``tools/list`` is the union of what each
server lists (namespaced ``server__tool``, asked of the servers at once; a server that fails is left
out of that list and logged), and ``tools/call`` goes to the server its namespace names. A session is
bound to its path: one begun on ``/mcp`` is no session on ``/mcp/files`` and the reverse.

The caller is already authenticated (its sluice key or token). ``initialize`` seals a new session
into its id; every other request needs that id back, opened for the same identity and server.
``tools/list`` shows the upstream's tools by their namespaced names, only those the registry lets
the caller call; ``tools/call`` is judged by the same registry as a model's tool call (allowed,
refused with a JSON-RPC error that says why, or held for approval), sent upstream on sluice's own
session with the server, and its result bounded and read by the detectors before it goes back.

An approved call is redeemed by sending the same ``tools/call`` again with the approval id in
``_meta["sluice/approval"]``: the approval is used (once, for exactly the approved arguments, by
``ToolApprovals.redeem``) and the call runs.

Every call that names a tool of a server is counted by the MCP limits (``limits.py``) and ends in one
record, metric and span (``usage.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

import mcp.types as mt
from mcp.shared.exceptions import MCPError
from mcp_types.methods import parse_client_request, serialize_server_result
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION
from pydantic import ValidationError

from ..core import scope
from ..core.errors import GatewayError
from ..core.mcp_config import Mcp, McpPolicy, capacities
from ..guard import Judgement, ToolApprovals, context_digest
from ..identity import Principal
from ..core.errors import UpstreamTimeout
from .authz import ContentAccess, ToolAccess, namespaced, owner_of
from .content import Content
from .content import upstream_refusal as _upstream_refusal
from .jsonrpc import NO_SESSION, PLAIN_VERSIONS, REFUSED, UPSTREAM, CallParams, Refusal, Request, call_params, plain_result
from .limits import CallLimits
from .pins import Pins
from .results import guard_result
from .session import Session, Sessions
from .subscriptions import Subscriber, Subscriptions
from .upstreams import Upstream, Upstreams
from .usage import Call, CallLog

log = logging.getLogger("sluice.mcp")
APPROVAL_META = "sluice/approval"
SESSION_HEADER = "Mcp-Session-Id"
METHODS = frozenset({"initialize", "ping", "tools/list", "tools/call", "resources/list", "resources/templates/list",
                     "resources/read", "prompts/list", "prompts/get", "completion/complete", "resources/subscribe",
                     "resources/unsubscribe"})
FEDERATED = "*"  # the session binding of /mcp (no server is named so: names are [A-Za-z0-9_-])


class Answer:
    """What one POST gets back: a JSON-RPC result or error (None for a notification: 202), and headers."""

    __slots__ = ("result", "headers")

    def __init__(self, result: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
        self.result = result
        self.headers = headers


class McpGateway:
    """Answers MCP requests of authenticated callers for each configured server."""

    def __init__(self, cfg: Mcp, upstreams: Upstreams, sessions: Sessions, approvals: ToolApprovals,
                 active: Callable[[], Any], record_change: Callable[[Any], Any] | None = None, *,
                 limiter: Any = None, metrics: Any = None, tracer: Any = None, admission: Any = None) -> None:
        self._cfg = cfg
        self.upstreams = upstreams
        self.sessions = sessions
        self._approvals = approvals
        self._active = active  # the active policy version (``.guard``, ``.version``, ``.hash``)
        self._access = self.access = ToolAccess(lambda: getattr(active(), "guard", None))
        self._limits = self.limits = CallLimits(limiter, cfg.limits, admission)  # admission: the servers' fair queues
        self._admission = admission
        def section() -> McpPolicy | None:  # the active version's ``mcp`` section
            return getattr(getattr(active(), "document", None), "mcp", None)

        self._log = CallLog(approvals.record, active, metrics, tracer, cfg.max_recorded_result_chars)
        # issue 25 item 5: definitions pinned in the active version's ``mcp`` section; others quarantined
        self.pins = Pins(section, cfg.pin_recheck_s, record_change)
        # resources, prompts, completion: relayed under the active policy's ``mcp.resources`` / ``mcp.prompts``,
        # each read and get recorded as a tool call is
        self.content = Content(upstreams, ContentAccess(section), self.pins, self._guard, self._log)

        async def still_open(sub: Subscriber) -> bool:
            try:
                return await sessions.open(sub.session_id, sub.identity_id, sub.path) is not None
            except Refusal:  # the store cannot say now: kept until the next sweep
                return True

        # resources/subscribe: which sessions hear which resource's updates (this replica's table, subscriptions.py)
        self.subscriptions = Subscriptions(upstreams, self.content.access.resource, still_open)

    def activate(self, servers: Any) -> None:
        """A policy version's MCP servers, live on this replica: their sessions reconciled (``Upstreams.reconcile``),
        their fair queues sized by their ``capacity``."""
        self.upstreams.reconcile(servers)
        if self._admission is not None:
            self._admission.update(capacities(servers))
        self.limits.queues(self._admission)

    def server(self, name: str) -> Upstream | None:
        """The server of a path (None: the federated path ``/mcp``), or a 404 refusal."""
        if name == FEDERATED:
            return None
        up = self.upstreams.get(name)
        if up is None:
            raise Refusal(mt.INVALID_REQUEST, "No such MCP server.", "unknown_server", 404)
        return up

    async def session(self, who: Principal, server: str, session_id: str | None) -> Session:
        if not session_id:
            raise Refusal(mt.INVALID_REQUEST, f"Send the {SESSION_HEADER} header that initialize returned.",
                          "missing_session", 400)
        got = await self.sessions.open(session_id, who.identity_id, server)
        if got is None:  # unknown, expired, ended, or another identity's: all look the same
            raise Refusal(NO_SESSION, "No such session; initialize a new one.", "unknown_session", 404)
        return got

    async def request(self, who: Principal, server: str, msg: mt.JSONRPCRequest | Request, session_id: str | None,
                      request_id: str, headers: Mapping[str, str] | None = None) -> Answer:
        """``server``: a configured server's name, or ``FEDERATED`` for ``/mcp``."""
        up = self.server(server)
        method = msg.method
        if method not in METHODS:
            raise Refusal(mt.METHOD_NOT_FOUND, f"Method not found: {method[:64]}.", "method_not_found")
        if method == "initialize":
            return self._initialize(who, server, msg.params)
        session = await self.session(who, server, session_id)
        fast = call_params(msg.params) if method == "tools/call" and session.protocol in PLAIN_VERSIONS else None
        if fast is not None:  # the common tools/call, read and answered without the SDK's models (jsonrpc.py)
            out = await self._call_tool(who, up, fast, request_id, headers or {})
            return Answer(out if plain_result(out) else self._wire(method, session.protocol, out))
        try:
            req = parse_client_request(method, session.protocol, msg.params)
        except (ValidationError, KeyError, ValueError):
            raise Refusal(mt.INVALID_PARAMS, f"Invalid params for {method}.", "invalid_params") from None
        if isinstance(req, mt.PingRequest):
            out: dict[str, Any] = {}
        elif isinstance(req, mt.ListToolsRequest):
            out = await self._list_tools(who, up)
        elif isinstance(req, mt.CallToolRequest):
            out = await self._call_tool(who, up, req.params, request_id, headers or {})
        elif method in Content.METHODS:
            out = await self.content.answer(who, up, req, request_id, headers or {})
        elif isinstance(req, (mt.SubscribeRequest, mt.UnsubscribeRequest)):
            out = await self.content.subscription(who, up, req, self.subscriptions, Subscriber(
                session_id, who.identity_id, who.identity_name, who.team, server, session.expires))  # type: ignore[arg-type]
        else:
            raise Refusal(mt.METHOD_NOT_FOUND, f"Method not found: {method[:64]}.", "method_not_found")
        return Answer(self._wire(method, session.protocol, out))

    @staticmethod
    def _wire(method: str, protocol: str, out: dict[str, Any]) -> dict[str, Any]:
        try:  # in the wire shape of the session's protocol version (fields it does not know are dropped)
            return serialize_server_result(method, protocol, out)
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
        up = self.server(server)
        instructions = (f"Tools of the MCP server {server!r}, governed by sluice: names are `{up.namespace}__tool`."
                        if up is not None else
                        "Tools of every MCP server behind sluice, governed by sluice: names are `server__tool`.")
        result = mt.InitializeResult(
            protocol_version=version, capabilities=mt.ServerCapabilities(
                tools=mt.ToolsCapability(list_changed=True), completions=mt.CompletionsCapability(),
                resources=mt.ResourcesCapability(subscribe=self._subscribes(up), list_changed=True),
                prompts=mt.PromptsCapability(list_changed=True)),  # on GET's stream (notify.py)
            server_info=mt.Implementation(name=f"sluice/{server if up is not None else 'mcp'}", version="0.1.0"),
            instructions=instructions)
        return Answer(result.model_dump(mode="json", by_alias=True, exclude_none=True), {SESSION_HEADER: sid})

    def _subscribes(self, up: Upstream | None) -> bool:
        """``resources/subscribe`` is offered where its updates can be heard (the GET stream is on) and, on a server's
        path, unless that server said it takes none."""
        streams = self._cfg.streams
        return streams.per_identity > 0 and streams.total > 0 and (up is None or up.subscribes() is not False)

    async def _list_tools(self, who: Principal, up: Upstream | None) -> dict[str, Any]:
        if up is not None:
            try:
                shown = await self._visible(who, up, await up.list_tools())
            except MCPError as exc:
                raise _upstream_refusal(exc) from None
        else:  # federated: every server at once; one that fails is left out, not the whole list
            ups = list(self.upstreams.by_name.values())
            lists = await asyncio.gather(*(u.list_tools() for u in ups), return_exceptions=True)
            shown = []
            for u, tools in zip(ups, lists):
                if isinstance(tools, BaseException):
                    if not isinstance(tools, Exception):
                        raise tools
                    log.warning("mcp: /mcp: server %s left out of tools/list (%s)", u.spec.name, type(tools).__name__)
                    continue
                shown += await self._visible(who, u, tools)
        return mt.ListToolsResult(tools=shown).model_dump(mode="json", by_alias=True, exclude_none=True)

    async def _visible(self, who: Principal, up: Upstream, tools: list[mt.Tool]) -> list[mt.Tool]:
        """The tools of ``up`` this caller sees: not quarantined (``pins``), and allowed by the registry."""
        shown = []
        for tool in await self.pins.screen(up.spec.name, up.namespace, tools):
            name = namespaced(up.namespace, tool.name)
            if self._access.visible(name, who.identity_name, who.team):
                shown.append(tool.model_copy(update={"name": name}))
        return shown

    async def _call_tool(self, who: Principal, up: Upstream | None, params: mt.CallToolRequestParams | CallParams, request_id: str,
                         headers: Mapping[str, str]) -> dict[str, Any]:
        name, arguments = params.name, dict(params.arguments or {})
        up, tool = owner_of(up, self.upstreams.by_name.values(), name, "tool")
        meta: dict[str, Any] = dict(params.meta or {})
        call = self._log.begin(up.spec.name, name, arguments, headers, meta)
        try:
            return await self._run_call(who, up, tool, call, meta, request_id)
        except Refusal as r:
            if call.decision == "allow":
                call.refuse("error", r.reason)
            raise
        finally:
            self._log.finish(call, who, request_id)

    async def _run_call(self, who: Principal, up: Upstream, tool: str, call: Call, meta: dict[str, Any],
                        request_id: str) -> dict[str, Any]:
        name, arguments = call.tool, call.arguments
        try:  # a quarantined tool (definition unpinned or changed) is refused before anything else
            await self.pins.check_call(up.spec.name, up.namespace, tool, up.list_tools)
        except MCPError as exc:
            raise _upstream_refusal(exc) from None
        except Refusal as r:
            call.refuse("quarantined", r.reason)
            raise
        judgement = call.judgement = self._access.judge(name, arguments, who.identity_name, who.team)
        if judgement is not None:
            call.refuse(judgement.verdict, judgement.reason)
            if judgement.verdict == "block":
                raise Refusal(REFUSED, f"The call to {name[:64]} is refused by the gateway's policy: {judgement.reason}.",
                              "tool_refused", data={"reason": judgement.reason})
            if judgement.verdict == "hold":
                approval = meta.get(APPROVAL_META)
                if approval is None:
                    out = await self._hold(who, judgement, up.spec.name, request_id)
                    call.approval_id = out["_meta"][APPROVAL_META]["id"]
                    return out
                call.approval_id = str(approval)[:64]
                try:
                    await self._redeem(who, str(approval), name, arguments, request_id)
                except Refusal as r:
                    call.refuse("block", r.reason)
                    raise
                call.refuse("allow", "approved")
        try:
            reservation = await self._limits.take(request_id, who.identity_id, who.team, up.spec.name, name)
        except Refusal as r:
            call.refuse("limited", r.message)
            raise
        try:
            result = await up.call_tool(tool, arguments)
            call.upstream_status = "ok" if not result.is_error else "tool_error"
        except MCPError as exc:
            call.upstream_status = f"error {exc.code}"
            raise _upstream_refusal(exc) from None
        except UpstreamTimeout:
            call.upstream_status = "timeout"
            raise Refusal(UPSTREAM, f"MCP server {up.spec.name} did not answer in time.", "mcp_upstream_timeout") from None
        except GatewayError as exc:
            call.upstream_status = "unreachable"
            raise Refusal(UPSTREAM, exc.message, exc.code or "mcp_upstream_error") from None
        finally:
            self._limits.release(reservation)
        return self._log.result(call, self._guard(result, who, name, request_id))

    def _guard(self, result: Any, who: Principal, name: str, request_id: str) -> Any:
        """A tool's result, a resource's contents or a prompt's messages, as untrusted input (``results.py``)."""
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
