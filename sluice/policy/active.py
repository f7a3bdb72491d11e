"""The active policy of one replica: compiled off to the side, then swapped in with one reference.

A new version is compiled whole (route table with its switches applied, limit rule set) before
anything is installed; the route table carries the ``ActivePolicy`` it was built for, so a request
that took its table holds the limits and the version header of that same version. No request sees
half a policy.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..cache import CacheRules, compile_section
from ..core.config import WeightedTarget
from ..core.errors import ConfigError
from ..guard import GuardPolicy
from ..limits import Limiter
from ..routing import KILLED, RoutingState
from ..routing.policy import Environments, PolicyError, RoutingPolicy, replace_version
from .document import PolicyDocument, PolicyInvalid, Switches

HEADER = "x-sluice-policy"


class ActivePolicy:
    """One compiled version: its number, hash, header value, document, limit rules, freeze flag and
    guard rules (``guard`` is None when the version has no guardrail rule set, tool or expose grant: the fast path)
    and cache rules (``cache``: None when no rule set caches anything)."""

    __slots__ = ("version", "hash", "tag", "document", "canonical", "rules", "limits_active", "frozen", "table",
                 "guard", "cache")

    def __init__(self, version: int, hash: str, document: PolicyDocument, canonical: bytes, rules: Any,
                 limits_active: bool, table: Any, guard: GuardPolicy | None = None) -> None:
        self.version = version
        self.hash = hash
        self.tag = f"{version}-{hash[:12]}"
        self.document = document
        self.canonical = canonical
        self.rules = rules
        self.limits_active = limits_active
        self.frozen = document.switches.frozen
        self.table = table
        self.guard = guard
        self.cache: CacheRules | None = compile_section(document.cache)


def effective_routing(routing: RoutingPolicy, switches: Switches) -> RoutingPolicy:
    """The routing the data plane serves: killed targets unapproved (or replaced by their fallback),
    a killed route sent wholly to its fallback target."""
    out = routing
    try:
        for target, fallback in switches.disabled_targets.items():
            out = replace_version(out, target, approved=False)
            if fallback is not None:
                routes = []
                for spec in out.routes:
                    merged: dict[str, int] = {}
                    for w in spec.targets:
                        name = fallback if w.target == target else w.target
                        merged[name] = merged.get(name, 0) + w.weight
                    targets = [WeightedTarget(target=n, weight=w) for n, w in merged.items()]
                    routes.append(msgspec.structs.replace(spec, targets=targets))
                out = msgspec.structs.replace(out, routes=routes)
        routes = []
        for spec in out.routes:
            fallback = switches.disabled_routes.get(spec.name, "")
            if fallback:
                spec = msgspec.structs.replace(spec, targets=[WeightedTarget(target=fallback, weight=1)], fallbacks=[])
            routes.append(spec)
        return msgspec.structs.replace(out, routes=routes)
    except PolicyError as exc:
        raise PolicyInvalid(f"a switch names something the registry does not hold: {exc}") from None


def compile_policy(version: int, hash: str, doc: PolicyDocument, canonical: bytes,
                   routing: RoutingState, limiter: Limiter, environments: Environments) -> ActivePolicy:
    """Everything a version needs to serve, built without touching what is serving now. A version that
    breaks the environment rule raises ``EnvironmentMismatch``, whichever path made it."""
    environments.check(doc.routing)
    known_routes = {r.name for r in doc.routing.routes}
    for name in doc.switches.disabled_routes:
        if name not in known_routes:
            raise PolicyInvalid(f"a switch names route {name!r}, which the policy does not hold")
    names = [r.name for r in doc.limits.rules]
    if len(set(names)) != len(names):
        raise PolicyInvalid("limit rule names must be unique")
    try:
        table = routing.compile(effective_routing(doc.routing, doc.switches))
    except KeyError as exc:
        raise PolicyInvalid(f"the policy names {exc.args[0]!r}, which is not in the registry") from None
    for route in table.routes:
        for target in doc.switches.disabled_targets:  # unapproved by the switch: say so in explanations and 503s
            if target in route.excluded:
                route.excluded[target] = KILLED
        if route.name in doc.switches.disabled_routes and not doc.switches.disabled_routes[route.name]:
            route.excluded = {t.name: KILLED for t in route.targets + route.fallbacks}
            route.targets, route.fallbacks, route.cumulative, route.total = (), (), (), 0
    for rule in doc.cache.rules:  # a semantic rule's embeddings model is one the policy serves, or every lookup misses
        if rule.mode == "semantic" and not table.reach(rule.embeddings_model):
            raise PolicyInvalid(f"cache rule {rule.name!r}: embeddings_model {rule.embeddings_model!r} is not a model "
                                "the policy serves")
    why = limiter.unshared(doc.limits.rules)
    if why is not None:
        raise PolicyInvalid(why)
    rules = limiter.compile_rules(doc.limits.rules)
    try:
        guard: GuardPolicy | None = GuardPolicy(doc.guardrails, doc.tools, table.reach)
    except ConfigError as exc:
        raise PolicyInvalid(str(exc)) from None
    active = ActivePolicy(version, hash, doc, canonical, rules, bool(doc.limits.rules) or limiter.anomaly is not None,
                          table, guard if guard.active or guard.grants else None)
    table.active = active
    return active


def install(active: ActivePolicy, routing: RoutingState, limiter: Limiter) -> None:
    """Swap in a compiled version: no await between the assignments, so every request sees one version."""
    routing.install(active.version, active.table)
    limiter.install_rules(active.rules)
