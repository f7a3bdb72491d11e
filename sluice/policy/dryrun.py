"""Dry run of a change set: what it touches, and how recent traffic would have been routed under it.

Recent traffic is the usage ledger's newest records (every replica writes them to the store),
so the answer covers the whole fleet, not one replica's memory.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec

from ..core.types import Identity, UsageRecord
from ..routing import RouteTable
from ..routing.policy import touched_routes
from .active import effective_routing
from .document import PolicyDocument, changed_sections


def _route_of(table: RouteTable, alias: str) -> dict | None:
    """Where a request for ``alias`` lands: the first candidate route and its usable targets by weight."""
    for route in table.candidates(alias):
        return {"route": route.name, "targets": {t.name: route.weights.get(t.name, 0) for t in route.targets},
                "fallbacks": [t.name for t in route.fallbacks]}
    return None


def _table(doc: PolicyDocument) -> RouteTable:
    return RouteTable(effective_routing(doc.routing, doc.switches))


def dry_run(before: PolicyDocument, after: PolicyDocument, recent: list[UsageRecord],
            identities: list[Identity]) -> dict[str, Any]:
    """Sections, routes, models and identities the change affects, and recent requests that would move."""
    names = sorted({r.name for r in before.routing.routes} | {r.name for r in after.routing.routes})
    routes = touched_routes(before.routing, after.routing, names)  # what approval counts as touched, too
    switched = set(before.switches.disabled_routes) ^ set(after.switches.disabled_routes)
    routes = sorted(set(routes) | switched)
    old_t, new_t = _table(before), _table(after)
    aliases = set(old_t.names()) | set(new_t.names()) | {r.model for r in recent if r.model}
    models = {a for a in aliases if _route_of(old_t, a) != _route_of(new_t, a)}
    old_rules = {r.name: r for r in before.limits.rules}
    new_rules = {r.name: r for r in after.limits.rules}
    rules = sorted(n for n in set(old_rules) | set(new_rules) if old_rules.get(n) != new_rules.get(n))
    named_identities: set[str] = set()
    everyone = False
    for name in rules:
        for rule in (old_rules.get(name), new_rules.get(name)):
            if rule is None:
                continue
            if "model" in rule.match:
                models.add(rule.match["model"])
            if "identity" in rule.match:
                named_identities.add(rule.match["identity"])
            elif "model" not in rule.match:
                everyone = True
    by_alias: Counter = Counter(r.model for r in recent if r.model)
    traffic = []
    for alias, n in sorted(by_alias.items()):
        was, would = _route_of(old_t, alias), _route_of(new_t, alias)
        if was != would:
            traffic.append({"model": alias, "recent_requests": n, "now": was, "under_change": would})
    used = {r.identity_id for r in recent if r.model in models}
    affected = sorted({i.name for i in identities
                       if everyone or i.id in used or i.name in named_identities or i.id in named_identities
                       or any(m == "*" or m in models for m in i.models)})
    return {"sections": changed_sections(before, after), "routes": routes, "models": sorted(models),
            "limit_rules": rules, "identities": affected, "recent_requests_considered": len(recent),
            "traffic": traffic,
            "switches": msgspec.to_builtins(after.switches) if "switches" in changed_sections(before, after) else None}
