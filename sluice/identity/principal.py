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
        self.roles = frozenset(identity.roles)
        self.grants = scopes_of(identity.roles)
        ends = [t for t in (identity.expires_at, key.expires_at if key else None, expires_at) if t is not None]
        self.expires_at: float | None = min(ends) if ends else None
