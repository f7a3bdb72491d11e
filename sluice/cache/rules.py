"""The ``cache`` policy section compiled for the hot path: the first rule set that covers a request.

A version with no rule set compiles to None (``ActivePolicy.cache``): the pipeline's only cost is that
one attribute check. The section's digest is part of every key, so a change of the section starts a new
key space and entries made under the old one are never served again (they age out).
"""

from __future__ import annotations

import hashlib

import msgspec

from ..core.cache_config import CacheRule, CacheSection

NANOS = 1_000_000_000


class Rule:
    """One compiled rule set."""

    __slots__ = ("name", "off", "ttl_s", "scope", "max_entry_bytes", "tool_calls", "sampled", "several", "charge_nanos",
                 "count_tokens", "semantic")

    def __init__(self, spec: CacheRule) -> None:
        self.name = spec.name
        self.off = spec.mode == "off"
        self.ttl_s = spec.ttl_s
        self.scope = spec.scope
        self.max_entry_bytes = spec.max_entry_bytes
        self.tool_calls = spec.tool_calls
        self.sampled = spec.sampled
        self.several = spec.several
        self.charge_nanos = round(spec.charge * NANOS)
        self.count_tokens = spec.count_tokens
        # mode `semantic`: (embeddings model, threshold, most user turns, the embedding's bound in seconds); None:
        # exact only (its path never reads more)
        self.semantic = ((spec.embeddings_model, spec.threshold, spec.max_user_turns, spec.embeddings_timeout_s)
                         if spec.mode == "semantic" else None)


class CacheRules:
    """The rule sets of one policy version; ``rule_for`` answers from a memo after the first request."""

    __slots__ = ("digest", "_rules", "_memo")

    def __init__(self, section: CacheSection) -> None:
        self.digest = hashlib.sha256(msgspec.json.encode(section, order="sorted")).hexdigest()[:16]
        self._rules = [(r.match, Rule(r)) for r in section.rules]
        self._memo: dict[tuple[str, str | None, str, str], Rule | None] = {}

    def rule_for(self, identity: str, team: str | None, model: str, route: str) -> Rule | None:
        """The first rule set covering this caller, model (the name it asked for) and route; None: not cached."""
        key = (identity, team, model, route)
        memo = self._memo
        try:
            return memo[key]
        except KeyError:
            pass
        got = None
        for m, rule in self._rules:
            if ((not m.identities or identity in m.identities) and (not m.teams or team in m.teams)
                    and (not m.models or model in m.models) and (not m.routes or route in m.routes)):
                got = None if rule.off else rule  # an `off` rule set exempts what it covers from later ones
                break
        if len(memo) > 100_000:  # bounded: names come from the store and the routes, not the caller
            memo.clear()
        memo[key] = got
        return got


def compile_section(section: CacheSection) -> CacheRules | None:
    """None when no rule set can cache anything (the fast path)."""
    live = [r for r in section.rules if r.mode != "off"]
    if not live:
        return None
    return CacheRules(section)
