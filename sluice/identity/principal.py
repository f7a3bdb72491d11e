"""The authenticated caller as the hot path sees it: who, which key, what it may use, until when."""

from __future__ import annotations

from ..core.types import ApiKey, Environment, Identity
from .roles import scopes_of


class Scopes:
    """Model scopes of an identity: exact names, ``prefix*`` patterns, or ``*`` for all.

    Immutable and shared: no memo of the names asked for, because callers choose those names
    (a per-caller memo is memory a hostile caller can fill), and the check without one is a set
    lookup and a C-level ``startswith`` over the prefixes.
    """

    __slots__ = ("_all", "_exact", "_prefixes")

    def __init__(self, patterns: list[str]) -> None:
        self._all = "*" in patterns
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in patterns if p.endswith("*") and p != "*")

    def allows(self, model: str) -> bool:
        """The model is within these scopes."""
        return self._all or model in self._exact or (bool(self._prefixes) and model.startswith(self._prefixes))


_SHARED: dict[frozenset[str], Scopes] = {}
_SHARED_MAX = 4096


def scopes_for(patterns: list[str]) -> Scopes:
    """The one shared ``Scopes`` of a set of patterns (principals of an identity, tokens with one scope set)."""
    key = frozenset(patterns)
    got = _SHARED.get(key)
    if got is None:
        if len(_SHARED) >= _SHARED_MAX:  # bounded: token scope sets are chosen by callers
            _SHARED.clear()
        got = _SHARED[key] = Scopes(patterns)
    return got


# One (roles, grants) pair per combination of roles, shared by every principal holding it: roles are a fixed
# set, so these are a handful, where one pair per principal was two more sets per key for the registry to
# build on every reload and the collector to walk (bench/scale.py, 100,000 identities).
_ROLE_SETS: dict[tuple[str, ...], tuple[frozenset[str], frozenset[str]]] = {}
_ROLE_SETS_MAX = 1024


def roles_and_grants(roles: list[str]) -> tuple[frozenset[str], frozenset[str]]:
    """The shared frozen roles and the control-plane scopes they grant."""
    key = tuple(roles)
    got = _ROLE_SETS.get(key)
    if got is None:
        got = (frozenset(roles), scopes_of(roles))
        if len(_ROLE_SETS) < _ROLE_SETS_MAX:  # bounded even if a store held role names no release knows
            _ROLE_SETS[key] = got
    return got


class Principal:
    """One credential resolved to its identity; built once per credential, shared by its requests."""

    __slots__ = ("identity_id", "identity_name", "owner", "team", "environment", "key_id", "scopes",
                 "expires_at", "plane", "roles", "grants")

    def __init__(self, identity: Identity, key: ApiKey | None, *, models: list[str] | None = None,
                 expires_at: float | None = None, credential_id: str | None = None) -> None:
        self.identity_id = identity.id
        self.identity_name = identity.name
        self.owner = identity.owner
        self.team = identity.team
        self.environment: Environment = identity.environment
        self.key_id = key.id if key is not None else credential_id
        self.plane = key.plane if key is not None else "data"
        self.scopes = scopes_for(identity.models if models is None else models)
        self.roles, self.grants = roles_and_grants(identity.roles)
        ends = [t for t in (identity.expires_at, key.expires_at if key else None, expires_at) if t is not None]
        self.expires_at: float | None = min(ends) if ends else None
