"""Control-plane MCP (issue 25, item 9): servers, tools (prompts, resource templates) with their pin state, approving
or rejecting a definition, and what one identity's lists would show. A definition is named by its pin key:
``server__tool``, ``prompt:server__prompt``, ``template:server__name`` (``sluice.mcp.pins``).

Approving a definition proposes a change set of the policy's ``mcp`` section that pins the tool's current hash:
the change-set flow decides it (applied at once for dev, or waiting for another operator when ``mcp`` is a
prod part), so every pin is a policy version and an audit entry. The scan finding (injection signal, detector
kinds) is written into the change set's reason, so the approver reads it where the change set is decided.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import msgspec

from ..core.errors import Conflict, GatewayError, InvalidRequest, NotFound
from ..core.exchange import Exchange, Reply
from ..core.mcp_config import Sha256
from ..identity import Actor
from ..identity import roles as r
from ..mcp import McpGateway
from ..mcp.authz import upstream_name
from ..mcp.pins import Kind, Seen, kind_of, scan
from ..policy import PolicyService, changeset_view, decode
from ..policy.service import event
from ..store import Store
from .bodies import decode as _decode
from .openapi import accepts

_Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=1000)]


class ToolsQuery(msgspec.Struct, kw_only=True):
    """Query of MCP definitions: ``as`` an identity (what its lists would show, and why not the rest); ``state``;
    ``kind``: tools (the default), prompts or resource templates."""

    as_: str | None = msgspec.field(default=None, name="as")
    state: Literal["pinned", "changed", "unpinned", "off", "quarantined"] | None = None
    kind: Literal["tool", "prompt", "template"] = "tool"


class PinApproval(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Pin a tool's current definition; ``sha256``: the hash the approver reviewed (refused if it changed since)."""

    reason: _Reason
    sha256: Sha256 | None = None


class PinRejection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Leave a definition quarantined; pending change sets that would pin it are rejected."""

    reason: _Reason


def _view(s: Seen) -> dict[str, Any]:
    out = {"name": s.name, "kind": s.kind, "server": s.server, "state": s.state, "quarantined": s.quarantined,
           "sha256": s.sha256, "pinned": s.pinned, "description": (s.item.description or "")[:2000],
           "scan": scan(s.item, s.kind)}
    if s.kind == "template":
        out["uri_template"] = getattr(s.item, "uri_template", None)
    return out


_GRANTS = {"prompt": "denied by the policy's mcp.prompts grants", "template": "denied by the policy's mcp.resources grants",
           "tool": "denied by the tool registry"}


class McpAdmin:
    """The MCP endpoints of the control plane."""

    def __init__(self, gateway: McpGateway, policy: PolicyService, store: Store) -> None:
        self._gw = gateway
        self._policy = policy
        self._store = store

    def endpoints(self) -> list[tuple[str, str, tuple[str, ...], object]]:
        return [
            ("GET", "/admin/mcp/servers", (r.TOOLS_READ,), self.servers),
            ("GET", "/admin/mcp/tools", (r.TOOLS_READ,), self.tools),
            ("POST", "/admin/mcp/tools/{tool}/approve", (r.TOOLS_READ, r.POLICY_PROPOSE), self.approve),
            ("POST", "/admin/mcp/tools/{tool}/reject", (r.TOOLS_READ, r.POLICY_APPROVE), self.reject),
        ]

    async def _listing(self, name: str, kind: Kind = "tool") -> list[Seen]:
        up = self._gw.upstreams.get(name)
        if up is None:  # removed by a policy version since the names were read
            raise NotFound(f"no MCP server {name!r}", param="server")
        items = await (up.list_tools() if kind == "tool" else up.list_prompts() if kind == "prompt"
                       else up.list_resource_templates())
        return await self._gw.pins.observe(name, up.namespace, items, kind)

    async def _all(self, kind: Kind = "tool") -> tuple[list[Seen], dict[str, str]]:
        names = list(self._gw.upstreams.by_name)
        got = await asyncio.gather(*(self._listing(n, kind) for n in names), return_exceptions=True)
        seen: list[Seen] = []
        errors: dict[str, str] = {}
        for name, res in zip(names, got):
            if isinstance(res, BaseException):
                errors[name] = res.message if isinstance(res, GatewayError) else type(res).__name__
            else:
                seen += res
        return seen, errors

    async def servers(self, actor: Actor, ex: Exchange) -> Reply:
        """The upstream MCP servers: health (they answer tools/list), tool count, quarantined tools, pin mode."""
        seen, errors = await self._all()
        section = self._gw.pins.section()
        out = []
        for name, up in self._gw.upstreams.by_name.items():
            mine = [s for s in seen if s.server == name]
            out.append({"name": name, "url": up.spec.url, "namespace": up.namespace, "pin": section.mode(name),
                        "healthy": name not in errors, "error": errors.get(name), "tools": len(mine) if name not in errors else None,
                        "quarantined": sum(s.quarantined for s in mine)})
        return Reply.json({"object": "list", "data": out})

    @accepts(query=ToolsQuery)
    async def tools(self, actor: Actor, ex: Exchange) -> Reply:
        """Every tool (prompt, resource template: ``kind``) with its pin state (pinned, changed, unpinned, off),
        current and pinned hashes and scan; with ``as``: whether that identity's list shows it, and why not."""
        try:
            q = msgspec.convert(dict(ex.query), ToolsQuery, strict=False)
        except msgspec.ValidationError as exc:
            raise InvalidRequest(f"bad query: {exc}", param="state") from None
        seen, errors = await self._all(q.kind)
        rows = [_view(s) for s in seen]
        if q.as_ is not None:
            actor.require(r.IDENTITIES_READ)
            ident = next((i for i in await self._store.list_identities() if i.name == q.as_), None)
            if ident is None:
                raise NotFound(f"no identity {q.as_[:128]!r}", param="as")
            for row, s in zip(rows, seen):
                allowed = self._allowed(s, ident.name, ident.team)
                row["shown"] = allowed and not s.quarantined
                row["why"] = ("shown" if row["shown"] else _GRANTS[s.kind] if not allowed
                              else f"quarantined ({s.state})")
        if q.state is not None:
            rows = [x for x in rows if (x["quarantined"] if q.state == "quarantined" else x["state"] == q.state)]
        return Reply.json({"object": "list", "data": rows, "errors": errors,
                           **({"as": q.as_} if q.as_ is not None else {})})

    def _allowed(self, s: Seen, identity: str, team: str | None) -> bool:
        if s.kind == "tool":
            return self._gw.access.visible(s.name, identity, team)
        content = self._gw.content.access
        if s.kind == "prompt":
            return content.prompt(s.server, s.item.name, identity, team)
        return content.resource(s.server, getattr(s.item, "uri_template", ""), identity, team)

    async def _current(self, key: str) -> Seen:
        """A definition by its pin key (``server__tool``, ``prompt:server__prompt``, ``template:server__name``)."""
        kind, name = kind_of(key)
        for server, up in self._gw.upstreams.by_name.items():
            if upstream_name(up.namespace, name) is not None:
                for s in await self._listing(server, kind):
                    if s.name == key:
                        return s
        raise NotFound(f"no MCP {kind} {key[:128]!r} is listed by a server now", param="tool")

    @accepts(PinApproval)
    async def approve(self, actor: Actor, ex: Exchange) -> Reply:
        """Propose the change set that pins a tool's current definition (its scan finding in the reason)."""
        req: PinApproval = _decode(ex.body, PinApproval)  # type: ignore[assignment]
        s = await self._current(ex.params["tool"])
        if req.sha256 is not None and req.sha256 != s.sha256:
            raise Conflict(f"the definition of {s.name} changed since it was reviewed: it is sha256:{s.sha256} now",
                           code="definition_changed", param="sha256")
        if s.pinned == s.sha256:
            raise InvalidRequest(f"{s.name} is pinned to this definition already", param="tool")
        found = scan(s.item, s.kind)
        section = self._policy.current.document.mcp
        pins = {**section.pins, s.name: s.sha256}
        reason = (f"pin MCP {s.kind} {s.name} to sha256:{s.sha256} (was {s.pinned or 'unpinned'}); scan: injection "
                  f"{found['injection']}, detectors {', '.join(found['detectors']) or 'none'}: {req.reason}")
        row, applied = await self._policy.propose(
            actor, {"mcp": {**msgspec.to_builtins(section), "pins": pins}}, base=None, reason=reason,
            action="mcp.pin", target=s.name,
            detail=lambda b, a: {"tool": s.name, "kind": s.kind, "sha256": s.sha256, "previous": s.pinned, "scan": found})
        return Reply.json({**changeset_view(row), "pending": applied is None, "tool": _view(s)},
                          status=201 if applied is not None else 202)

    @accepts(PinRejection)
    async def reject(self, actor: Actor, ex: Exchange) -> Reply:
        """Leave a tool's current definition quarantined: recorded, and pending change sets pinning it rejected."""
        req: PinRejection = _decode(ex.body, PinRejection)  # type: ignore[assignment]
        s = await self._current(ex.params["tool"])
        rejected = []
        for listed in await self._store.list_changesets(limit=1000):  # listed without their documents
            if listed["status"] != "pending" or "mcp" not in str(listed["sections"]):
                continue
            row = await self._store.changeset(listed["id"])
            if row is not None and decode(row["document"]).mcp.pins.get(s.name) == s.sha256:
                await self._policy.reject(actor, row["id"], req.reason)
                rejected.append(row["id"])
        await self._store.record_change(event(actor, "mcp.reject", s.name, {
            "kind": s.kind, "sha256": s.sha256, "pinned": s.pinned, "scan": scan(s.item, s.kind), "reason": req.reason,
            "changesets": rejected}))
        return Reply.json({**_view(s), "rejected_changesets": rejected})
