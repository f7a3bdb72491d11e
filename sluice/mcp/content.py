"""Resources, prompts and completion through the MCP gateway: relayed to the upstream session, decided per caller.

On ``/mcp/{server}`` each method goes to that server. On the federated ``/mcp`` prompts are namespaced as tools
are (``server__prompt``) and routed by their namespace; resources keep their URI (a URI is already a global
name, and rewriting it would break the links a resource's text carries) and a read goes to the server that
lists that URI, else to the one whose resource template matches it (the first in config order when several
do). Finding it lists the servers' resources at the time of the read: no replica keeps a map that another
would lack.

Who may reach what is ``ContentAccess``: the active policy's ``mcp.resources`` (URI globs) and ``mcp.prompts``
(name globs), default deny. Lists show only what the caller may reach; a read, get or completion of anything
else is JSON-RPC error -32010 saying so.
A ``resources/read``, ``prompts/get`` or ``completion/complete`` that reaches a server ends in one record, metric
and span as a tool call does (``usage.py``). ``resources/subscribe`` is judged as a read of its URI, and kept in the
subscription table (``subscriptions.py``). Prompts and resource templates are pinned as tools are (``pins.py``): a quarantined one is left out of its list
and refused when got, read through or completed. What comes back (a resource's contents, a prompt's messages) is
untrusted input and goes through the tool
results' guard (``results.py``): the size bound and the detectors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import mcp.types as mt
from mcp.shared.exceptions import MCPError

from ..core.errors import GatewayError, UpstreamTimeout
from ..guard.approvals import MASK
from ..identity import Principal
from .authz import ContentAccess, namespaced, owner_of
from .jsonrpc import REFUSED, UPSTREAM, Refusal
from .pins import Pins, template_pattern
from .subscriptions import Subscriber, Subscriptions
from .upstreams import Upstream, Upstreams
from .usage import Call, CallLog

log = logging.getLogger("sluice.mcp")
_DUMP = {"mode": "json", "by_alias": True, "exclude_none": True}
_NO_HEADERS: Mapping[str, str] = {}


def upstream_refusal(exc: MCPError) -> Refusal:
    """The upstream's own JSON-RPC error, its message read by the detectors (a server may echo a secret)."""
    return Refusal(exc.code if -32768 <= exc.code <= -32000 else UPSTREAM, MASK.mask(str(exc.error.message)[:1024]),
                   "mcp_upstream_error")


def _refused(kind: str, name: str, reason: str, what: str = "") -> Refusal:
    """``what``: how it was to be used, when not just read or got (``subscribed to``)."""
    why = f"no grant in the policy's mcp.{kind}s names it for this caller"
    how = f" cannot be {what}: it" if what else ""
    return Refusal(REFUSED, f"The {kind} {name[:128]}{how} is refused by the gateway's policy: {reason} ({why}).",
                   f"{kind}_refused", data={"reason": reason})


class Content:
    """Answers ``resources/*``, ``prompts/*`` and ``completion/complete`` for one caller."""

    METHODS = frozenset({"resources/list", "resources/templates/list", "resources/read", "prompts/list",
                         "prompts/get", "completion/complete"})

    def __init__(self, upstreams: Upstreams, access: ContentAccess, pins: Pins,
                 guard: Callable[[Any, Principal, str, str], Any], log: CallLog) -> None:
        self._upstreams = upstreams
        self.access = access
        self._pins = pins  # prompts and resource templates are pinned as tools are
        self._guard = guard
        self._log = log  # a read or get ends in one record, metric and span, as a tool call does

    async def answer(self, who: Principal, up: Upstream | None, req: Any, request_id: str,
                     headers: Mapping[str, str] = _NO_HEADERS) -> dict[str, Any]:
        if isinstance(req, mt.ListResourcesRequest):
            found = await self._gather(up, lambda u: u.list_resources())
            shown = [r for u, rs in found for r in rs if self._may_read(who, u, str(r.uri))]
            return mt.ListResourcesResult(resources=shown).model_dump(**_DUMP)
        if isinstance(req, mt.ListResourceTemplatesRequest):
            found = await self._gather(up, lambda u: u.list_resource_templates())
            shown = [t for u, ts in found for t in await self._pins.screen(u.spec.name, u.namespace, ts, "template")
                     if self._may_read(who, u, t.uri_template)]
            return mt.ListResourceTemplatesResult(resource_templates=shown).model_dump(**_DUMP)
        if isinstance(req, mt.ReadResourceRequest):
            uri = str(req.params.uri)
            owner = up or await self._owner(uri)
            call = self._log.begin(owner.spec.name, f"resource:{uri}", {"uri": uri}, headers, dict(req.params.meta or {}),
                                   "resources/read", "resources/read")
            return await self._recorded(call, who, request_id, self._read(who, owner, uri, call, request_id))
        if isinstance(req, mt.ListPromptsRequest):
            found = await self._gather(up, lambda u: u.list_prompts())
            shown = [p.model_copy(update={"name": namespaced(u.namespace, p.name)}) for u, ps in found
                     for p in await self._pins.screen(u.spec.name, u.namespace, ps, "prompt")
                     if self.access.prompt(u.spec.name, p.name, who.identity_name, who.team)]
            return mt.ListPromptsResult(prompts=shown).model_dump(**_DUMP)
        if isinstance(req, mt.GetPromptRequest):
            owner, own = self._route_prompt(up, req.params.name)
            key = f"prompt:{namespaced(owner.namespace, own)}"
            call = self._log.begin(owner.spec.name, key, dict(req.params.arguments or {}), headers,
                                   dict(req.params.meta or {}), "prompts/get")
            return await self._recorded(call, who, request_id, self._get(who, owner, own, req.params.arguments, call,
                                                                         request_id))
        if isinstance(req, mt.CompleteRequest):
            p = req.params
            if isinstance(p.ref, mt.PromptReference):
                owner, own = self._route_prompt(up, p.ref.name)
                named = namespaced(owner.namespace, own)
            else:
                owner, own = up or await self._owner(p.ref.uri, templates_only=True), p.ref.uri
                named = own
            context = p.context.arguments if p.context is not None else None
            argument = {"name": p.argument.name, "value": p.argument.value}
            call = self._log.begin(owner.spec.name, f"completion:{named}", {"ref": named, "argument": argument,
                                   **({"context": context} if context is not None else {})}, headers,
                                   dict(p.meta or {}), "completion/complete",
                                   f"completion:{named}" if isinstance(p.ref, mt.PromptReference) else "completion/complete")
            return await self._recorded(call, who, request_id, self._complete(who, owner, own, p.ref, argument, context,
                                                                              call, request_id))
        raise Refusal(mt.METHOD_NOT_FOUND, "Method not found.", "method_not_found")

    def _may_read(self, who: Principal, up: Upstream, uri: str) -> bool:
        return self.access.resource(up.spec.name, uri, who.identity_name, who.team)

    async def _recorded(self, call: Call, who: Principal, request_id: str, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
        """Run a read or get; whatever becomes of it, its one record is written at the end."""
        try:
            return await work
        except Refusal as r:
            if call.decision == "allow":
                call.refuse("quarantined" if r.reason.endswith("_quarantined") else "error", r.reason)
            raise
        finally:
            self._log.finish(call, who, request_id)

    async def _granted_resource(self, who: Principal, owner: Upstream, uri: str, call: Call | None, what: str = "",
                                template: bool = False) -> None:
        """Refused unless a grant names this URI (or URI template) for the caller and it is not quarantined."""
        if not self._may_read(who, owner, uri):
            if call is not None:
                call.refuse("block", "resource_not_allowed")
            raise _refused("resource", uri, "resource_not_allowed", what)
        name, ns = owner.spec.name, owner.namespace
        await _relay(owner, self._pins.check_template(name, ns, uri, owner.list_resource_templates) if template
                     else self._pins.check_read(name, ns, uri, owner.list_resources, owner.list_resource_templates))

    async def _granted_prompt(self, who: Principal, owner: Upstream, own: str, call: Call) -> None:
        """Refused unless a grant names this prompt for the caller and it is not quarantined."""
        if not self.access.prompt(owner.spec.name, own, who.identity_name, who.team):
            call.refuse("block", "prompt_not_allowed")
            raise _refused("prompt", namespaced(owner.namespace, own), "prompt_not_allowed")
        await _relay(owner, self._pins.check(owner.spec.name, owner.namespace, own, owner.list_prompts, "prompt"))

    async def _read(self, who: Principal, owner: Upstream, uri: str, call: Call, request_id: str) -> dict[str, Any]:
        await self._granted_resource(who, owner, uri, call)
        return self._result(call, await _relay(owner, owner.read_resource(uri), call), who, uri, request_id)

    async def _get(self, who: Principal, owner: Upstream, own: str, arguments: dict[str, str] | None, call: Call,
                   request_id: str) -> dict[str, Any]:
        await self._granted_prompt(who, owner, own, call)
        result = await _relay(owner, owner.get_prompt(own, arguments), call)
        return self._result(call, result, who, namespaced(owner.namespace, own), request_id)

    async def _complete(self, who: Principal, owner: Upstream, own: str, ref: Any, argument: dict[str, str],
                        context: dict[str, str] | None, call: Call, request_id: str) -> dict[str, Any]:
        """A completion, judged as the prompt or the resource template it names (granted, not quarantined)."""
        if isinstance(ref, mt.PromptReference):
            await self._granted_prompt(who, owner, own, call)
            ref = ref.model_copy(update={"name": own})
        else:
            await self._granted_resource(who, owner, own, call, template=True)
        result = await _relay(owner, owner.complete(ref, argument, context), call)
        return self._result(call, result, who, call.tool, request_id)

    async def subscription(self, who: Principal, up: Upstream | None, req: mt.SubscribeRequest | mt.UnsubscribeRequest,
                           table: Subscriptions, sub: Subscriber) -> dict[str, Any]:
        """``resources/subscribe``: judged as a read of the URI (granted, not quarantined), then this session is in
        the table (sluice subscribed upstream if it is the first); ``resources/unsubscribe``: out of it."""
        uri = str(req.params.uri)
        if isinstance(req, mt.UnsubscribeRequest):
            await table.unsubscribe(sub.digest, up.spec.name if up is not None else None, uri)
            return {}
        owner = up or await self._owner(uri)
        await self._granted_resource(who, owner, uri, None, "subscribed to")
        await _relay(owner, table.subscribe(sub, owner, uri))
        return {}

    def _result(self, call: Call, result: Any, who: Principal, name: str, request_id: str) -> dict[str, Any]:
        """The contents or messages as untrusted input (bounded, masked, read for injection), kept with the record."""
        return self._log.result(call, self._guard(result, who, name, request_id))

    def _route_prompt(self, up: Upstream | None, name: str) -> tuple[Upstream, str]:
        """The server and its own name of a prompt (namespaced ``server__prompt`` on ``/mcp`` and on a server's path)."""
        return owner_of(up, self._upstreams.by_name.values(), name, "prompt")  # type: ignore[no-any-return]

    async def _gather(self, up: Upstream | None, ask: Callable[[Upstream], Awaitable[list[Any]]]) -> list[tuple[Upstream, list[Any]]]:
        """What one server lists, or (on ``/mcp``) each server at once; one that fails is left out and logged."""
        if up is not None:
            return [(up, await _relay(up, ask(up)))]
        ups = list(self._upstreams.by_name.values())
        lists = await asyncio.gather(*(ask(u) for u in ups), return_exceptions=True)
        out = []
        for u, got in zip(ups, lists):
            if isinstance(got, BaseException):
                if not isinstance(got, Exception):
                    raise got
                if not (isinstance(got, MCPError) and got.code == mt.METHOD_NOT_FOUND):  # a server without any
                    log.warning("mcp: /mcp: server %s left out of a list (%s)", u.spec.name, type(got).__name__)
                continue
            out.append((u, got))
        return out

    async def _owner(self, uri: str, templates_only: bool = False) -> Upstream:
        """On ``/mcp``: the server that lists this URI, else the first whose resource template matches it."""
        if not templates_only:
            for u, resources in await self._gather(None, lambda u: u.list_resources()):
                if any(str(r.uri) == uri for r in resources):
                    return u
        for u, templates in await self._gather(None, lambda u: u.list_resource_templates()):
            if any(t.uri_template == uri or template_pattern(t.uri_template).match(uri) for t in templates):
                return u
        raise Refusal(mt.INVALID_PARAMS, f"No server behind /mcp lists the resource {uri[:128]!r}.", "unknown_resource")


async def _relay(up: Upstream, call: Awaitable[Any], record: Call | None = None) -> Any:
    """One upstream request, its failures as the JSON-RPC errors a tool call gets; ``record``: the read or get
    whose upstream status this is."""
    status = None
    try:
        got = await call
        status = "ok"
        return got
    except MCPError as exc:
        status = f"error {exc.code}"
        raise upstream_refusal(exc) from None
    except UpstreamTimeout:
        status = "timeout"
        raise Refusal(UPSTREAM, f"MCP server {up.spec.name} did not answer in time.", "mcp_upstream_timeout") from None
    except GatewayError as exc:
        status = "unreachable"
        raise Refusal(UPSTREAM, exc.message, exc.code or "mcp_upstream_error") from None
    finally:
        if record is not None:
            record.upstream_status = status
