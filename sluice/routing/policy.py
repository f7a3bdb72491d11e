"""The routing policy document: the registry, the routes and their weights, one versioned whole.

The config file seeds it; the control plane changes it; the store keeps it (so a change survives a
restart and reaches every replica). Changes are pure functions from one document to the next, so
the control plane, the store and the tests all see the same rules.
"""

from __future__ import annotations

import msgspec

from ..core.config import (LEGACY_VERSION, Config, ModelVersion, RegisteredModel, RouteMatch, RouteSpec,
                           WeightedTarget)
from ..core.types import Environment


class RoutingPolicy(msgspec.Struct, kw_only=True):
    """Registry, routes and, per route, the weights before its last change (what rollback restores)."""

    registry: list[RegisteredModel] = msgspec.field(default_factory=list)
    routes: list[RouteSpec] = msgspec.field(default_factory=list)
    previous_weights: dict[str, list[WeightedTarget]] = msgspec.field(default_factory=dict)


class PolicyError(ValueError):
    """A change that names something missing or breaks a rule; the message names which."""


class EnvironmentMismatch(PolicyError):
    """A registry version placed where callers of one environment would be served by another's upstream."""


def from_config(config: Config) -> RoutingPolicy:
    """The file's policy: a model under ``models:`` is a route of its name with one approved target.

    Order: the file's specific routes, then the ``models:`` routes, then a catch-all route if any,
    so the default still closes the table.
    """
    legacy_registry = [RegisteredModel(name=m.name, versions=[ModelVersion(
        version=LEGACY_VERSION, upstream=m.upstream, upstream_model=m.target_model, approved=True,
        environment=m.environment)]) for m in config.models]
    legacy_routes = [RouteSpec(name=m.name, match=RouteMatch(models=[m.name]),
                               targets=[WeightedTarget(target=f"{m.name}@{LEGACY_VERSION}")]) for m in config.models]
    specific = [r for r in config.routes if r.match != RouteMatch()]
    default = [r for r in config.routes if r.match == RouteMatch()]
    return RoutingPolicy(registry=legacy_registry + list(config.registry), routes=specific + legacy_routes + default)


def seed(stored: RoutingPolicy | None, file: RoutingPolicy) -> RoutingPolicy:
    """What the file adds to the stored policy: models, versions and routes it does not hold yet.

    Whatever the store already holds stays as it is: an operator's approval, weights or retarget
    is never rewritten by a restart with the file.
    """
    if stored is None:
        return file
    models = {m.name: m for m in stored.registry}
    registry = list(stored.registry)
    for m in file.registry:
        have = models.get(m.name)
        if have is None:
            registry.append(m)
            continue
        known = {v.version for v in have.versions}
        extra = [v for v in m.versions if v.version not in known]
        if extra:
            registry[registry.index(have)] = msgspec.structs.replace(have, versions=have.versions + extra)
    names = {r.name for r in stored.routes}
    routes = list(stored.routes)
    default = [r for r in routes if r.match == RouteMatch()]
    routes = [r for r in routes if r.match != RouteMatch()]
    routes += [r for r in file.routes if r.name not in names and r.match != RouteMatch()]
    default = default or [r for r in file.routes if r.name not in names and r.match == RouteMatch()]
    return msgspec.structs.replace(stored, registry=registry, routes=routes + default)


def _route(policy: RoutingPolicy, name: str) -> tuple[int, RouteSpec]:
    for i, r in enumerate(policy.routes):
        if r.name == name:
            return i, r
    raise PolicyError(f"no route {name!r}")


def _versions(policy: RoutingPolicy) -> set[str]:
    return {f"{m.name}@{v.version}" for m in policy.registry for v in m.versions}


def set_weights(policy: RoutingPolicy, route: str, weights: list[WeightedTarget]) -> RoutingPolicy:
    """Shift a route's traffic; the weights it had become what rollback restores."""
    i, spec = _route(policy, route)
    known = _versions(policy)
    for w in weights:
        if w.target not in known:
            raise PolicyError(f"target {w.target!r} is not a registry version (model@version)")
    if not weights or sum(w.weight for w in weights) <= 0:
        raise PolicyError("a route needs at least one target with a positive weight")
    routes = list(policy.routes)
    routes[i] = msgspec.structs.replace(spec, targets=weights)
    previous = {**policy.previous_weights, route: spec.targets}
    return msgspec.structs.replace(policy, routes=routes, previous_weights=previous)


def rollback(policy: RoutingPolicy, route: str) -> RoutingPolicy:
    """Restore the weights a route had before its last change (a second rollback undoes the first)."""
    _route(policy, route)
    before = policy.previous_weights.get(route)
    if before is None:
        raise PolicyError(f"route {route!r} has no earlier weights to roll back to")
    return set_weights(policy, route, before)


def _version(policy: RoutingPolicy, target: str) -> tuple[int, int, ModelVersion]:
    model, _, version = target.partition("@")
    for i, m in enumerate(policy.registry):
        if m.name == model:
            for j, v in enumerate(m.versions):
                if v.version == version:
                    return i, j, v
    raise PolicyError(f"no registry version {target!r}")


def replace_version(policy: RoutingPolicy, target: str, **changes: object) -> RoutingPolicy:
    """A new document in which one registry version (``model@version``) has these fields changed."""
    i, j, v = _version(policy, target)
    registry = list(policy.registry)
    versions = list(registry[i].versions)
    versions[j] = msgspec.structs.replace(v, **changes)
    registry[i] = msgspec.structs.replace(registry[i], versions=versions)
    return msgspec.structs.replace(policy, registry=registry)


def version(policy: RoutingPolicy, target: str) -> ModelVersion:
    """One registry version by ``model@version``."""
    return _version(policy, target)[2]


def _registry(policy: RoutingPolicy) -> dict[str, ModelVersion]:
    return {f"{m.name}@{v.version}": v for m in policy.registry for v in m.versions}


def _reaches(policy: RoutingPolicy, names: list[str]) -> dict[str, tuple | None]:
    """Per route of ``names``, what decides where its requests go: the names of the routes ahead of it that
    could take the same aliases, its spec, and the registry versions it targets or falls back to (None: no
    such route). Routes are indexed by alias, so this stays near linear in the routes."""
    versions = _registry(policy)
    routes = policy.routes
    first: dict[str, int] = {}
    by_alias: dict[str, list[int]] = {}
    anywhere: list[int] = []  # routes with no ``models`` match take any alias
    for i, r in enumerate(routes):
        first.setdefault(r.name, i)
        for alias in set(r.match.models):
            by_alias.setdefault(alias, []).append(i)
        if not r.match.models:
            anywhere.append(i)
    out: dict[str, tuple | None] = {}
    for name in names:
        i = first.get(name)
        if i is None:
            out[name] = None
            continue
        spec = routes[i]
        ahead: set[int] | range = range(i)
        if spec.match.models:
            ahead = {j for j in anywhere if j < i}
            for alias in spec.match.models:
                ahead.update(j for j in by_alias[alias] if j < i)
        used = [w.target for w in spec.targets] + list(spec.fallbacks)
        out[name] = (tuple(routes[j].name for j in sorted(ahead)), spec, [(t, versions.get(t)) for t in used])
    return out


def touched_routes(before: RoutingPolicy, after: RoutingPolicy, names: list[str]) -> list[str]:
    """The routes of ``names`` whose requests could land elsewhere after the change: their own spec, a
    version they target or fall back to (upstream, approval, environment...), or a route ahead that
    could take their requests was changed, added, removed or moved."""
    old, new = _reaches(before, names), _reaches(after, names)
    specs = {r.name: r for r in after.routes}
    changed = {r.name for r in before.routes if specs.get(r.name) != r}  # the same names ahead, another spec
    return [n for n in names if old[n] != new[n] or (old[n] is not None and not changed.isdisjoint(old[n][0]))]


class Environments:
    """The environment rule: a model moves only among upstreams of its environment.

    An upstream's environment is that of the registry versions the config file places on it (one
    environment when they all agree, else shared); an upstream the file places nothing on is shared.
    It comes from the file, never from a stored version, so no change can redefine it. Every policy
    version is held to it when it compiles, whatever made it (change set, approval, rollback, switch, seed).
    """

    __slots__ = ("_upstream", "_home")

    def __init__(self, file: RoutingPolicy) -> None:
        served: dict[str, set[Environment | None]] = {}
        for v in _registry(file).values():
            served.setdefault(v.upstream, set()).add(v.environment)
        self._upstream = {u: next(iter(envs)) if len(envs) == 1 else None for u, envs in served.items()}
        # a version the file declares stays among upstreams of the environment the file gave it
        self._home = {name: self._upstream[v.upstream] for name, v in _registry(file).items()}

    def check(self, policy: RoutingPolicy) -> None:
        """Raise ``EnvironmentMismatch`` naming the first version that breaks the rule."""
        for name, v in _registry(policy).items():
            there = self._upstream.get(v.upstream)
            home = self._home.get(name, there)
            if home != there:
                raise EnvironmentMismatch(
                    f"{name} is served from {home or 'shared'} upstreams; upstream {v.upstream!r} is "
                    f"{there or 'shared'}: a route cannot move a model across environments")
            if there is not None and v.environment != there:
                # a version bound to another environment (or to none: every caller) would put callers of
                # that environment on this one's upstream
                raise EnvironmentMismatch(
                    f"upstream {v.upstream!r} serves {there} callers only, but {name} is bound to "
                    f"{v.environment or 'every environment'}: a model cannot move across environments")
