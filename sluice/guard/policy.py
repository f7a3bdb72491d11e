"""The guardrails policy, compiled once: rule sets with their detectors, the tool registry.

``parse`` is the pure function that turns raw ``guardrails:`` and ``tools:`` sections (from the
config file now, from the policy document later) into typed structs; ``GuardPolicy`` compiles
them and answers, per request, which rule set applies.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any

import msgspec
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry
from referencing.exceptions import Unresolvable

from ..core.errors import ConfigError
from ..core.guardrails import Guardrails, RuleSet, ToolSpec
from .detectors import KINDS, Detector
from .minimise import Shape, shape
from .plain_schema import Check, compile_plain



def parse(guardrails: Any, tools: Any) -> tuple[Guardrails, list[ToolSpec]]:
    """Raw sections -> typed structs; a bad one raises ``ConfigError`` naming the field."""
    try:
        g = msgspec.convert(guardrails or {}, Guardrails)
        t = msgspec.convert(tools or [], list[ToolSpec])
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid guardrails: {exc}") from None
    return g, t


def from_file(guardrails: Any, tools: Any) -> tuple[Guardrails, list[ToolSpec]]:
    """The config file's sections, checked as a policy version would compile them: a bad rule or tool
    raises ``ConfigError`` naming its place. The file's classifiers become the trusted ones."""
    g, t = parse(guardrails, tools)
    trust_classifiers(g.rule_sets)  # the file's classifiers only: a change set cannot name a new module
    GuardPolicy(g, t)
    return g, t


class Tool:
    """A registry entry, compiled: its argument validator and who may call it."""

    __slots__ = ("name", "risk", "identities", "teams", "validator", "plain")

    def __init__(self, spec: ToolSpec, at: str) -> None:
        self.name = spec.name
        self.risk = spec.risk
        self.identities = frozenset(spec.identities)
        self.teams = frozenset(spec.teams)
        self.validator: Draft202012Validator | None = None
        self.plain: Check | None = None  # the schema compiled once into a quick check, when it is plain
        if spec.parameters is not None:
            try:
                Draft202012Validator.check_schema(spec.parameters)
            except SchemaError as exc:
                raise ConfigError(f"tool {spec.name!r}: parameters is not a JSON Schema ({exc.message}) - at `{at}`") from None
            where = _outside_ref(spec.parameters, "")
            if where is not None:
                raise ConfigError(f"tool {spec.name!r}: parameters may refer only within themselves (a `$ref` starting "
                                  f"with `#`); sluice never fetches a schema - at `{at}.parameters{where}`")
            # a registry that holds nothing and retrieves nothing: a reference is resolved inside the schema or fails
            self.validator = Draft202012Validator(spec.parameters, registry=_NOWHERE)
            self.plain = compile_plain(spec.parameters)

    def allows(self, identity: str | None, team: str | None) -> bool:
        """An empty allowlist is nobody's: a tool must name who may use it."""
        return identity in self.identities or (team is not None and team in self.teams)

    def argument_error(self, args: Any) -> str | None:
        if self.validator is None or (self.plain is not None and self.plain(args)):
            return None
        try:
            err = next(iter(self.validator.iter_errors(args)), None)
        except (Unresolvable, RecursionError):  # a reference that leads nowhere, or a schema that loops
            return "arguments: the schema cannot be applied"
        if err is None:
            return None
        where = "/".join(str(p) for p in err.absolute_path) or "arguments"
        return f"{where}: {err.validator} check failed"  # never the value itself


_NOWHERE: Registry = Registry()
_REFS = ("$ref", "$dynamicRef")


def _outside_ref(schema: Any, at: str) -> str | None:
    """Where a schema refers outside itself (a ``$ref`` or ``$dynamicRef`` not starting with ``#``), or None."""
    if isinstance(schema, dict):
        for k, v in schema.items():
            if k in _REFS and isinstance(v, str) and not v.startswith("#"):
                return f"{at}.{k}"
            got = _outside_ref(v, f"{at}.{k}")
            if got is not None:
                return got
    elif isinstance(schema, list):
        for i, v in enumerate(schema):
            got = _outside_ref(v, f"{at}[{i}]")
            if got is not None:
                return got
    return None


class Rules:
    """One rule set, compiled for the hot path."""

    __slots__ = ("spec", "name", "refuse", "expose", "detector", "input_action", "output_action", "content",
                 "image_hosts", "injection", "classifier", "output_on")

    def __init__(self, spec: RuleSet, at: str) -> None:
        self.spec = spec
        self.name = spec.name
        self.refuse = tuple(spec.input.refuse_params)
        self.expose = frozenset(spec.output.expose)
        d = spec.detectors
        unknown = set(d.kinds) - set(KINDS)
        if unknown:
            raise ConfigError(f"unknown detector kinds {sorted(unknown)}; known: {', '.join(KINDS)} - at `{at}.detectors.kinds`")
        self.detector = Detector(d.kinds or KINDS) if (d.input != "allow" or d.output != "allow") else None
        self.input_action = d.input
        self.output_action = d.output
        self.content = frozenset(spec.input.content_types)
        self.image_hosts = frozenset(h.lower() for h in spec.input.image_hosts)
        self.injection = spec.injection.action
        self.classifier = _load(spec.injection.classifier, f"{at}.injection.classifier")
        self.output_on = True  # minimisation always; detectors and tools per request


# The classifiers the config file names: the only modules a policy version may have imported. A
# change set comes through the control plane, and importing a module runs its code, so a proposal
# (validated by compiling it, before any approval) must never name a new one.
_TRUSTED: set[str] = set()


def trust_classifiers(rule_sets: Iterable[RuleSet]) -> None:
    """Allow the classifiers of the config file's rule sets (called once at start, from the file)."""
    _TRUSTED.update(r.injection.classifier for r in rule_sets if r.injection.classifier)


def _load(ref: str | None, at: str) -> Callable[[str], float] | None:
    """An external classifier hook: ``module:function`` taking text, returning a score in 0..1."""
    if not ref:
        return None
    if ref not in _TRUSTED:
        raise ConfigError(f"classifier {ref!r} is not one the config file names; only those can be used - at `{at}`")
    mod, _, fn = ref.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)  # type: ignore[no-any-return]
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"cannot import classifier {ref!r} - at `{at}`") from None


class GuardPolicy:
    """Rule sets (first match wins, else the defaults), the tool registry and who sees which reply fields."""

    __slots__ = ("rule_sets", "default", "tools", "grants", "_cache", "_shapes")

    def __init__(self, guardrails: Guardrails, tools: list[ToolSpec],
                 reach: Callable[[str], frozenset[str]] | None = None) -> None:
        # a rule set's `models` name aliases, routes, models or versions; it covers the versions they reach
        # (``reach``: the route table's), so a request is judged by the versions that may serve it
        self.rule_sets = []
        for i, rs in enumerate(guardrails.rule_sets):
            covered = None
            if rs.match.models:
                covered = frozenset().union(*(reach(m) if reach is not None else {m} for m in rs.match.models))
            self.rule_sets.append((rs.match, covered, Rules(rs, f"$.guardrails.rule_sets[{i}]")))
        self.default = Rules(RuleSet(), "$.guardrails")
        names = [t.name for t in tools]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"duplicate tool {sorted(dup)[0]!r} - at `$.tools`")
        self.tools = {t.name: Tool(t, f"$.tools[{i}]") for i, t in enumerate(tools)}
        self._cache: dict[tuple[frozenset[str], str, str | None], Rules] = {}
        self.grants = [(frozenset(g.identities), frozenset(g.teams), frozenset(g.fields)) for g in guardrails.expose]
        self._shapes: dict[tuple[Rules, str, str | None], Shape] = {}

    @property
    def active(self) -> bool:
        """Whether input checks, detectors or tools apply; minimisation applies either way."""
        return bool(self.rule_sets or self.tools)

    def shape_for(self, rules: Rules, identity: str, team: str | None) -> Shape:
        """What a caller's replies keep: the basics, its rule set's ``output.expose`` and its own grants."""
        key = (rules, identity, team)
        got = self._shapes.get(key)
        if got is None:
            got = shape(rules.expose.union(*(f for ids, teams, f in self.grants
                                              if identity in ids or (team is not None and team in teams))))
            if len(self._shapes) > 100_000:  # bounded: names come from the store, not the caller
                self._shapes.clear()
            self._shapes[key] = got
        return got

    def rules_for(self, served: frozenset[str], identity: str, team: str | None) -> Rules:
        """The first rule set covering any version in ``served`` (the request's route: its targets and
        fallbacks) for this caller, else the defaults."""
        key = (served, identity, team)
        got = self._cache.get(key)
        if got is None:
            got = self.default
            for m, covered, rules in self.rule_sets:
                if ((covered is None or not covered.isdisjoint(served)) and (not m.identities or identity in m.identities)
                        and (not m.teams or team in m.teams)):
                    got = rules
                    break
            if len(self._cache) > 100_000:  # bounded: names come from the store, not the caller
                self._cache.clear()
            self._cache[key] = got
        return got
