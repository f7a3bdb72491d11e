"""The policy document: one typed struct whose fields are its sections, and its canonical form.

A section is one field of ``PolicyDocument``; a later section (guardrails, tools) is one more field
with a default, so versions stored before it still decode. The canonical encoding (JSON, keys
sorted, every field written) is what is stored, hashed and compared: one document, one hash.
"""

from __future__ import annotations

import difflib
import hashlib
from typing import Any

import msgspec
import yaml

from ..core.cache_config import CacheSection
from ..core.config import LimitRule
from ..core.guardrails import Guardrails, ToolSpec
from ..core.mcp_config import McpPolicy
from ..routing.policy import RoutingPolicy


class LimitsSection(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The limit rules (``limits.rules`` of the config file seeds them)."""

    rules: list[LimitRule] = msgspec.field(default_factory=list)


class Switches(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Incident switches: killed targets and routes (each with an optional fallback target) and the freeze."""

    frozen: bool = False
    disabled_targets: dict[str, str | None] = msgspec.field(default_factory=dict)  # model@version -> fallback
    disabled_routes: dict[str, str | None] = msgspec.field(default_factory=dict)  # route -> fallback model@version


class PolicyDocument(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Every section of the policy. Add a section here, one line, with a default."""

    routing: RoutingPolicy = msgspec.field(default_factory=RoutingPolicy)
    limits: LimitsSection = msgspec.field(default_factory=LimitsSection)
    switches: Switches = msgspec.field(default_factory=Switches)
    guardrails: Guardrails = msgspec.field(default_factory=Guardrails)  # issue 11/12: the guard's rule sets
    tools: list[ToolSpec] = msgspec.field(default_factory=list)  # issue 11/12: the tool registry
    mcp: McpPolicy = msgspec.field(default_factory=McpPolicy)  # issue 25: MCP tool definitions pinned by operators
    cache: CacheSection = msgspec.field(default_factory=CacheSection)  # issue 27: the response cache's rule sets


SECTIONS: tuple[str, ...] = PolicyDocument.__struct_fields__
_decode = msgspec.json.Decoder(PolicyDocument)


class PolicyInvalid(ValueError):
    """A proposed document or section that does not validate; the message names where."""


def canonical(doc: PolicyDocument) -> bytes:
    """The one byte form of a document: JSON, keys sorted, defaults written."""
    return msgspec.json.encode(msgspec.to_builtins(doc), order="sorted")


def digest(data: bytes) -> str:
    """The content hash of a canonical document (sha256, hex)."""
    return hashlib.sha256(data).hexdigest()


def decode(data: bytes | str) -> PolicyDocument:
    """A stored document back into its typed form."""
    return _decode.decode(data)


def section_builtins(doc: PolicyDocument, name: str) -> Any:
    return msgspec.to_builtins(getattr(doc, name), order="sorted")


def to_yaml(doc: PolicyDocument, sections: tuple[str, ...] | None = None) -> str:
    """The document (or some sections) as YAML for review and Git: sections in declared order, keys sorted."""
    data = {name: section_builtins(doc, name) for name in (sections or SECTIONS)}
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def with_sections(base: PolicyDocument, sections: dict[str, Any]) -> PolicyDocument:
    """``base`` with whole sections replaced by these (plain data, as read from YAML or JSON)."""
    if not isinstance(sections, dict) or not sections:
        raise PolicyInvalid("a change names at least one section: " + ", ".join(SECTIONS))
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise PolicyInvalid(f"no policy section {unknown[0]!r}; sections are: {', '.join(SECTIONS)}")
    merged = {name: section_builtins(base, name) for name in SECTIONS}
    merged.update(sections)
    try:
        return msgspec.convert(merged, PolicyDocument)
    except msgspec.ValidationError as exc:
        raise PolicyInvalid(f"the policy does not validate: {exc}") from None


def changed_sections(before: PolicyDocument, after: PolicyDocument) -> list[str]:
    return [s for s in SECTIONS if section_builtins(before, s) != section_builtins(after, s)]


def diff(before: PolicyDocument, after: PolicyDocument, before_name: str, after_name: str) -> dict[str, str]:
    """Per changed section, a unified diff of its YAML."""
    out = {}
    for name in changed_sections(before, after):
        a, b = to_yaml(before, (name,)).splitlines(keepends=True), to_yaml(after, (name,)).splitlines(keepends=True)
        out[name] = "".join(difflib.unified_diff(a, b, f"{before_name}/{name}", f"{after_name}/{name}"))
    return out


SWITCH_LIMIT = "switch-"  # the limit rules an incident switch puts in (``sluice switch limit``) start so


def switch_changes(before: PolicyDocument, after: PolicyDocument) -> list[str]:
    """What going from ``before`` to ``after`` does to the incident switches, one sentence each: a rollback
    re-activates a whole earlier document, so it can lift a kill switch or restore a freeze nobody asked for."""
    out = []
    if before.switches.frozen != after.switches.frozen:
        out.append("it freezes the control plane" if after.switches.frozen else "it lifts the freeze")
    for kind, field in (("target", "disabled_targets"), ("route", "disabled_routes")):
        now, then = getattr(before.switches, field), getattr(after.switches, field)
        for name in sorted(set(now) | set(then)):
            if name not in then:
                out.append(f"it switches {kind} {name} back on (killed now)")
            elif name not in now:
                out.append(f"it kills {kind} {name} again" + (f" (fallback {then[name]})" if then[name] else ""))
            elif now[name] != then[name]:
                out.append(f"it changes the fallback of killed {kind} {name} to {then[name] or 'none (503)'}")
    now_rules = {r.name: r for r in before.limits.rules if r.name.startswith(SWITCH_LIMIT)}
    then_rules = {r.name: r for r in after.limits.rules if r.name.startswith(SWITCH_LIMIT)}
    for name in sorted(set(now_rules) | set(then_rules)):
        model = (then_rules.get(name) or now_rules[name]).match.get("model", name)
        if name not in then_rules:
            out.append(f"it lifts the switch limit on {model}")
        elif name not in now_rules:
            out.append(f"it puts the switch limit on {model} back")
        elif msgspec.to_builtins(now_rules[name]) != msgspec.to_builtins(then_rules[name]):
            out.append(f"it changes the switch limit on {model}")
    return out
