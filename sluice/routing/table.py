"""The compiled route table: a request's alias, caller and hints -> the first matching route -> a target.

Compiled once per policy version: every route's match becomes a few closures over frozensets, every
route's weights a cumulative list, and the routes that could take an alias are listed per alias, so a
decision walks a short tuple and allocates one ``Decision``. A new policy compiles a new table that
is swapped in with one assignment: a request sees the old table or the new one, never half.
"""

from __future__ import annotations

import random
import zlib
from bisect import bisect_right
from collections.abc import Callable, Mapping
from typing import Any

from ..core.config import Breaker, Compliance, Price, RouteMatch, RouteSpec
from ..core.prompt import estimate_tokens, prompt_chars
from ..core.types import Environment
from .breaker import CLOSED, CircuitBreaker
from .placement import Deployment
from .policy import RoutingPolicy

Check = Callable[[Any, Any, Any], bool]  # (principal, request, exchange) -> matches


class Target:
    """A registry version as traffic sees it: upstream, the model name it knows, its deployment (replicas
    and placement), breaker, context window and price (None: the model's in the price table)."""

    __slots__ = ("name", "model", "version", "upstream", "upstream_model", "environment", "region", "tier",
                 "approved", "breaker", "deployment", "context_window", "digest", "price")

    def __init__(self, name: str, model: str, version: str, upstream: str, upstream_model: str,
                 environment: Environment | None, *, region: str | None = None, tier: str | None = None,
                 approved: bool = True, breaker: CircuitBreaker | None = None, deployment: Deployment | None = None,
                 context_window: int | None = None, digest: str | None = None, price: Price | None = None) -> None:
        self.name = name
        self.model = model
        self.version = version
        self.upstream = upstream
        self.upstream_model = upstream_model
        self.environment = environment
        self.region = region
        self.tier = tier
        self.approved = approved
        self.breaker = breaker
        self.deployment = deployment
        self.context_window = context_window
        self.digest = digest
        self.price = price


def hint(name: str, request: Any, exchange: Any) -> str | None:
    """A routing hint: header ``x-sluice-<name>``, else the request's ``metadata[name]``."""
    value = exchange.headers.get("x-sluice-" + name)
    if value is not None:
        return value
    meta = getattr(request, "metadata", None)
    return meta.get(name) if isinstance(meta, dict) else None


def _prompt_tokens(request: Any) -> int:
    # about four characters a token: the route is matched before a target (and its tokenizer) is chosen
    return estimate_tokens(prompt_chars(request))


def compile_match(m: RouteMatch) -> tuple[Check, ...]:
    """The match as checks, cheapest first; an empty tuple matches everything."""
    checks: list[Check] = []
    if m.environment is not None:
        env = m.environment
        checks.append(lambda p, r, x: p.environment == env)
    if m.identities:
        names = frozenset(m.identities)
        checks.append(lambda p, r, x: p.identity_name in names)
    if m.teams:
        teams = frozenset(m.teams)
        checks.append(lambda p, r, x: p.team in teams)
    for field in ("task", "region", "tier"):
        wanted = frozenset(getattr(m, field))
        if wanted:
            checks.append(lambda p, r, x, f=field, w=wanted: hint(f, r, x) in w)
    if m.tags:
        tags = frozenset(m.tags)

        def has_tags(p: Any, r: Any, x: Any) -> bool:
            got = hint("tags", r, x)
            return got is not None and tags <= {t.strip() for t in got.split(",")}

        checks.append(has_tags)
    lo, hi = m.min_prompt_tokens, m.max_prompt_tokens
    if lo is not None or hi is not None:
        low, high = lo or 0, hi if hi is not None else 1 << 62
        checks.append(lambda p, r, x: low <= _prompt_tokens(r) <= high)
    return tuple(checks)


def _allowed(t: Target, c: Compliance | None) -> bool:
    return c is None or ((c.region is None or t.region == c.region) and (c.tier is None or t.tier == c.tier))


class CompiledRoute:
    """One route ready to decide: its checks, usable weighted targets, fallbacks, and what was left out."""

    __slots__ = ("name", "spec", "checks", "targets", "cumulative", "total", "fallbacks", "sticky", "retries",
                 "excluded", "weights", "headers", "windowed", "served", "_unheld")

    def __init__(self, spec: RouteSpec, targets: Mapping[str, Target]) -> None:
        self.name = spec.name
        self.spec = spec
        self.checks = compile_match(spec.match)
        # every version this route may serve a request from (weighted or fallback, usable now or not):
        # what guardrail rule sets match, so no alias or route choice leads around them
        self.served = frozenset(w.target for w in spec.targets) | frozenset(spec.fallbacks)
        self.sticky = spec.sticky
        self.retries = spec.retries
        # Left out at compile time, with the reason, for explanations: unapproved or outside compliance.
        self.excluded: dict[str, str] = {}
        usable: list[tuple[Target, int]] = []
        for w in spec.targets:
            t = targets[w.target]
            if self._usable(t, spec.compliance) and w.weight > 0:
                usable.append((t, w.weight))
        self.weights = {w.target: w.weight for w in spec.targets}
        self.targets = tuple(t for t, _ in usable)
        acc, cumulative = 0, []
        for _, weight in usable:
            acc += weight
            cumulative.append(acc)
        self.cumulative, self.total = tuple(cumulative), acc
        self.fallbacks = tuple(targets[f] for f in spec.fallbacks if self._usable(targets[f], spec.compliance))
        # x-sluice-route values, built once: a response's header is a lookup, not a format.
        self.headers = {t.name: f"{self.name}; target={t.name}" for t in self.targets + self.fallbacks}
        # Whether a request's size must be measured against a version's context window on this route.
        self.windowed = any(t.context_window is not None for t in self.targets + self.fallbacks)
        # (targets, fallbacks, excluded) before any hold: what ``hold`` filters, each time from the same start
        self._unheld: tuple[tuple[Target, ...], tuple[Target, ...], dict[str, str]] | None = None

    def hold(self, held: Mapping[str, str]) -> None:
        """Leave out the targets ``held`` names (name -> why), until a later call no longer names them: a
        version whose backends serve other weights than its digest (routing.supply). The route is changed
        in place, each attribute by one assignment; a request decides on it as on a compiled route."""
        if self._unheld is None:
            if not held:
                return
            self._unheld = (self.targets, self.fallbacks, dict(self.excluded))
        targets, fallbacks, excluded = self._unheld
        keep = tuple(t for t in targets if t.name not in held)
        acc, cumulative = 0, []
        for t in keep:
            acc += self.weights[t.name]
            cumulative.append(acc)
        self.excluded = {**excluded, **{n: why for n, why in held.items() if n in self.served}}
        self.cumulative, self.total = tuple(cumulative), acc
        self.fallbacks = tuple(t for t in fallbacks if t.name not in held)
        self.targets = keep

    def _usable(self, t: Target, c: Compliance | None) -> bool:
        if not t.approved:
            self.excluded[t.name] = "not approved"
            return False
        if not _allowed(t, c):
            self.excluded[t.name] = "outside the route's compliance boundary"
            return False
        return True

    def matches(self, principal: Any, request: Any, exchange: Any) -> bool:
        for check in self.checks:
            if not check(principal, request, exchange):
                return False
        return True


class Decision:
    """Why and where one request goes: the route, the chosen target, the attempts made (for explanations)."""

    __slots__ = ("request_id", "route", "target", "skipped", "attempts", "environment", "alias", "at", "needed",
                 "policy", "listener")

    def __init__(self, request_id: str, alias: str, route: CompiledRoute, target: Target | None,
                 environment: str, skipped: list[str] | None, at: float) -> None:
        self.request_id = request_id
        self.alias = alias
        self.route = route
        self.target = target
        self.environment = environment
        self.skipped = skipped  # targets passed over at decision time, with why (usually None)
        self.attempts: list[tuple[str, str, float]] = []  # (target, outcome, ms)
        self.at = at
        self.needed: int | None = None  # prompt + completion tokens, on a route with context windows
        self.policy: Any = None  # the policy version (``version``, ``hash``) the request ran under
        self.listener: str | None = None  # the named data-plane listener it came through (None: the only one)

    def header(self, target: Target | None = None) -> str:
        """The ``x-sluice-route`` value: the route and the target that answered (or was last tried)."""
        t = target or self.target
        return self.route.headers[t.name] if t is not None else f"{self.route.name}; target=-"

    def next_target(self, failed: Target, retryable: bool) -> Target | None:
        """Where the next attempt goes after ``failed``: a retry, then the fallbacks in order; None to stop."""
        if not retryable:
            return None
        route = self.route
        tried = self.attempts
        same = sum(1 for a in tried if a[0] == failed.name)
        if same <= route.retries and failed.breaker is not None and failed.breaker.state is CLOSED:
            return failed
        env = self.environment
        seen = {a[0] for a in tried}
        needed = self.needed
        for t in route.fallbacks:
            if t.name in seen or (t.environment is not None and t.environment != env):
                continue
            if needed is not None and t.context_window is not None and needed > t.context_window:
                self._skip(t, f"context window {t.context_window} < {needed} tokens")
                continue
            if t.breaker is None or t.breaker.allows():
                return t
            self._skip(t, "breaker open")
        return None

    def _skip(self, t: Target, why: str) -> None:
        if self.skipped is None:
            self.skipped = []
        self.skipped.append(f"{t.name}: {why}")


# Why a target is left out of a route because an operator switched it (or the route) off.
KILLED = "disabled by a kill switch"


class NoTarget(Exception):
    """A route matched but none of its targets can take the request (breakers open, none approved)."""

    def __init__(self, route: CompiledRoute, why: str) -> None:
        super().__init__(why)
        self.route = route
        self.why = why

    @property
    def killed(self) -> bool:
        """Whether an operator's kill switch, not an outage, left the route with nothing to serve."""
        return KILLED in self.route.excluded.values()


class RouteTable:
    """Alias -> candidate routes (in policy order) -> the first whose checks pass -> a target."""

    def __init__(self, policy: RoutingPolicy, *, transports: Mapping[str, Deployment] | None = None,
                 breakers: dict[str, CircuitBreaker] | None = None, breaker: Breaker | None = None,
                 rng: random.Random | None = None) -> None:
        transports = transports or {}
        bcfg = breaker or Breaker()
        breakers = breakers if breakers is not None else {}
        self.policy = policy
        self.targets: dict[str, Target] = {}
        for m in policy.registry:
            for v in m.versions:
                name = f"{m.name}@{v.version}"
                b = breakers.get(name)
                if b is None:
                    b = breakers[name] = CircuitBreaker(bcfg.failures, bcfg.window_s, bcfg.open_s)
                self.targets[name] = Target(
                    name, m.name, v.version, v.upstream, v.upstream_model or m.name, v.environment, region=v.region,
                    tier=v.tier, approved=v.approved, breaker=b, deployment=transports.get(v.upstream),
                    context_window=v.context_window, digest=v.digest, price=v.price)
        self.routes = tuple(CompiledRoute(spec, self.targets) for spec in policy.routes)
        anywhere = tuple(r for r in self.routes if not r.spec.match.models)
        by_alias: dict[str, list[CompiledRoute]] = {}
        for r in self.routes:
            for alias in r.spec.match.models:
                by_alias.setdefault(alias, [])
        # one pass in policy order, each route onto the lists of the aliases it names (every list, when it
        # names none): a scan of every route per alias made 1,000 one-alias routes take 1.4 s to compile
        for r in self.routes:
            for lst in (map(by_alias.__getitem__, dict.fromkeys(r.spec.match.models)) if r.spec.match.models
                        else by_alias.values()):
                lst.append(r)
        self._by_alias = {alias: tuple(lst) for alias, lst in by_alias.items()}
        self._anywhere = anywhere
        self._random = (rng or random.Random()).random

    def reach(self, name: str) -> frozenset[str]:
        """The versions a name reaches: a version itself, a model's versions, a route's or an alias's
        targets and fallbacks."""
        out = {t.name for t in self.targets.values() if name in (t.name, t.model)}
        for r in self.routes:
            if name == r.name or name in r.spec.match.models:
                out |= r.served
        return frozenset(out)

    def candidates(self, alias: str) -> tuple[CompiledRoute, ...]:
        """The routes that could take this alias, in policy order."""
        return self._by_alias.get(alias, self._anywhere)

    def match(self, alias: str, principal: Any, request: Any, exchange: Any) -> CompiledRoute | None:
        """The first route whose checks pass, or None (no route: the model does not exist for this caller)."""
        for route in self._by_alias.get(alias, self._anywhere):
            if not route.checks or route.matches(principal, request, exchange):
                return route
        return None

    def decide(self, alias: str, principal: Any, request: Any, exchange: Any, at: float) -> Decision | None:
        """Route and target for one request; None when no route takes it; ``NoTarget`` when none can serve."""
        route = self.match(alias, principal, request, exchange)
        if route is None:
            return None
        env = principal.environment
        targets = route.targets
        if len(targets) == 1 and not route.fallbacks:
            # Nowhere else to go: a breaker does not refuse; the caller gets the upstream's own answer.
            t = targets[0]
            if t.environment is None or t.environment == env:
                return Decision(exchange.request_id, alias, route, t, env, None, at)
            return None
        if len(targets) > 1:
            point = ((zlib.crc32(principal.identity_id.encode()) % route.total) if route.sticky
                     else int(self._random() * route.total))
            start = bisect_right(route.cumulative, point)
        else:
            start = 0
        n = len(targets)
        if n:
            t = targets[start]
            if (t.environment is None or t.environment == env) and (t.breaker is None or t.breaker.allows()):
                return Decision(exchange.request_id, alias, route, t, env, None, at)
        # The chosen target cannot serve: the next weighted ones in order, then the fallbacks; an open
        # breaker passes a target over while another can serve.
        first: Target | None = None
        skipped: list[str] | None = None
        for t in [targets[(start + i) % n] for i in range(n)] + list(route.fallbacks):
            if t.environment is not None and t.environment != env:
                continue
            if t.breaker is None or t.breaker.allows():
                return Decision(exchange.request_id, alias, route, t, env, skipped, at)
            first = first or t
            skipped = (skipped or []) + [f"{t.name}: breaker open"]
        if first is not None:
            skipped = (skipped or []) + [f"every target's breaker is open: {first.name} is tried anyway"]
            return Decision(exchange.request_id, alias, route, first, env, skipped, at)
        if targets or route.fallbacks:
            return None  # every target belongs to another environment: as if the model did not exist
        raise NoTarget(route, "no approved target")

    def names(self) -> list[str]:
        """The aliases routes name (what ``/v1/models`` may list)."""
        return list(self._by_alias)

    def serves(self, alias: str, environment: str) -> bool:
        """Whether some route for this alias has a target of this environment (or a shared one)."""
        for route in self._by_alias.get(alias, ()):
            if alias in route.spec.match.models:
                for t in route.targets + route.fallbacks:
                    if t.environment is None or t.environment == environment:
                        return True
        return False

    def get(self, alias: str) -> Target | None:
        """The first target of the first route naming this alias (the single target of a ``models:`` entry)."""
        for route in self._by_alias.get(alias, ()):
            if alias in route.spec.match.models and route.targets:
                return route.targets[0]
        return None
