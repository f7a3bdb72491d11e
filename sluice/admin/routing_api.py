"""Control-plane routing: the policy, weights, approvals, rollback, retargets and decision lookups.

Every change is a change set of the versioned policy (``PolicyService.change_section``): applied at
once and recorded with its new version when it touches no prod part, else waiting for a second
operator (202 with the change set). The rules a version must keep (the environment rule among them)
hold where every version compiles, so these endpoints hold no rule of their own that a change set could skip.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec

from ..core.config import LEGACY_VERSION, WeightedTarget
from ..core.errors import InvalidRequest, NotFound
from ..core.exchange import Exchange, Reply
from ..identity import Actor
from ..identity import roles as r
from ..routing import DecisionLog, PolicyError, RoutingPolicy, RoutingState, Supply, explain
from ..routing import policy as pol
from ..policy import PendingApproval, PolicyService, changeset_view
from .bodies import decode as _decode
from .openapi import accepts

Action = Callable[[Actor, Exchange], Awaitable[Reply]]


class Retarget(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    upstream: str
    upstream_model: str | None = None


class Weights(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A route's new split: ``[{"target": "model@version", "weight": 90}, ...]``."""

    targets: Annotated[list[WeightedTarget], msgspec.Meta(min_length=1, max_length=64)]


class Approval(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    approved: bool = True


def _weights(policy: RoutingPolicy, route: str) -> list:
    for spec in policy.routes:
        if spec.name == route:
            return msgspec.to_builtins(spec.targets)
    return []


class RoutingAdmin:
    """The routing endpoints of the control plane."""

    def __init__(self, state: RoutingState, decisions: DecisionLog, upstreams: list[str], policy: PolicyService,
                 supply: Supply | None = None) -> None:
        self._state = state
        self._supply = supply
        self._policy = policy
        self._decisions = decisions
        self._upstreams = set(upstreams)

    def endpoints(self) -> list[tuple[str, str, tuple[str, ...], Action]]:
        return [
            ("GET", "/admin/routes", (r.ROUTING_READ,), self.list_routes),
            ("PUT", "/admin/routes/{model}", (r.ROUTING_WRITE,), self.retarget),
            ("GET", "/admin/routes/decisions/{request_id}", (r.ROUTING_READ,), self.decision),
            ("GET", "/admin/routing", (r.ROUTING_READ,), self.get_policy),
            ("PUT", "/admin/routing/routes/{route}/weights", (r.ROUTING_WRITE,), self.set_weights),
            ("POST", "/admin/routing/routes/{route}/rollback", (r.ROUTING_WRITE,), self.rollback),
            ("PUT", "/admin/registry/{model}/versions/{version}/approval", (r.ROUTING_WRITE,), self.approve),
            ("GET", "/admin/registry/verify", (r.ROUTING_READ,), self.verify),
        ]

    async def _change(self, actor: Actor, fn: Callable[[RoutingPolicy], RoutingPolicy], action: str, target: str,
                      detail: Callable[[RoutingPolicy, RoutingPolicy], dict]) -> Reply | tuple[RoutingPolicy, RoutingPolicy]:
        """Apply and record a routing change; a change that waits for approval is a 202 with its change set."""
        try:
            b, a = await self._policy.change_section(actor, "routing", fn, action=action, target=target,
                                                     detail=lambda x, y: detail(x.routing, y.routing))
            return b.routing, a.routing
        except PendingApproval as pending:
            return Reply.json({**changeset_view(pending.changeset), "pending": True}, status=202)
        except PolicyError as exc:
            message = str(exc)
            if message.startswith("no "):
                raise NotFound(message) from None
            raise InvalidRequest(message) from None

    async def list_routes(self, actor: Actor, ex: Exchange) -> Reply:
        """Each model name callers use and its first target (the ``models:`` view), plus the routes."""
        table = self._state.table
        data = []
        for alias in table.names():
            t = table.get(alias)
            if t is not None:
                data.append({"model": alias, "upstream": t.upstream, "upstream_model": t.upstream_model,
                             "environment": t.environment, "target": t.name})
        return Reply.json({"object": "list", "data": data, "version": self._state.version})

    @accepts(Retarget)
    async def retarget(self, actor: Actor, ex: Exchange) -> Reply:
        req: Retarget = _decode(ex.body, Retarget)  # type: ignore[assignment]
        model = ex.params["model"]
        old = self._state.table.get(model)
        if old is None:
            raise NotFound(f"no model {model!r}")
        if req.upstream not in self._upstreams:
            raise InvalidRequest(f"no upstream {req.upstream!r}", param="upstream")
        # across environments: 409 environment_mismatch, from the compile of the version this would make
        upstream_model = req.upstream_model or old.upstream_model
        got = await self._change(actor, lambda p: pol.replace_version(p, old.name, upstream=req.upstream,
                                                                      upstream_model=upstream_model),
                                 "route.retarget", model, lambda b, a: {
            "from": {"upstream": old.upstream, "upstream_model": old.upstream_model},
            "to": {"upstream": req.upstream, "upstream_model": upstream_model}})
        if isinstance(got, Reply):
            return got
        return Reply.json({"model": model, "upstream": req.upstream, "upstream_model": upstream_model})

    async def decision(self, actor: Actor, ex: Exchange) -> Reply:
        """Why a recent request went where it went (this replica's last ``decisions_kept`` requests)."""
        d = self._decisions.find(ex.params["request_id"])
        if d is None:
            raise NotFound("no decision for that request id on this replica (decisions are kept per replica)")
        return Reply.json(explain(d))

    async def get_policy(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json({"version": self._state.version, "policy": self._state.policy})

    @accepts(Weights)
    async def set_weights(self, actor: Actor, ex: Exchange) -> Reply:
        req: Weights = _decode(ex.body, Weights)  # type: ignore[assignment]
        route = ex.params["route"]
        got = await self._change(actor, lambda p: pol.set_weights(p, route, req.targets), "route.weights", route,
                                 lambda b, a: {"from": _weights(b, route), "to": _weights(a, route)})
        if isinstance(got, Reply):
            return got
        return Reply.json({"route": route, "targets": req.targets, "version": self._state.version})

    async def rollback(self, actor: Actor, ex: Exchange) -> Reply:
        route = ex.params["route"]
        got = await self._change(actor, lambda p: pol.rollback(p, route), "route.rollback", route,
                                 lambda b, a: {"from": _weights(b, route), "to": _weights(a, route)})
        if isinstance(got, Reply):
            return got
        return Reply.json({"route": route, "targets": _weights(got[1], route), "version": self._state.version})

    @accepts(Approval)
    async def approve(self, actor: Actor, ex: Exchange) -> Reply:
        req: Approval = _decode(ex.body, Approval)  # type: ignore[assignment]
        target = f"{ex.params['model']}@{ex.params['version']}"
        if ex.params["version"] == LEGACY_VERSION and not req.approved:
            raise InvalidRequest("a model declared under `models:` is always approved", param="approved")
        got = await self._change(actor, lambda p: pol.replace_version(p, target, approved=req.approved),
                                 "registry.approve" if req.approved else "registry.unapprove", target, lambda b, a: {})
        if isinstance(got, Reply):
            return got
        return Reply.json({"target": target, "approved": req.approved, "version": self._state.version})

    async def verify(self, actor: Actor, ex: Exchange) -> Reply:
        """Every registry version's digest state on every replica of its upstream, as this process last checked it
        (``?check=now``: checked first). Only ``verified`` replicas take a version's traffic."""
        if self._supply is None:
            return Reply.json({"object": "list", "data": []})
        if ex.query.get("check") == "now":
            await self._supply.check()
        return Reply.json({"object": "list", "data": msgspec.to_builtins(self._supply.rows())})
