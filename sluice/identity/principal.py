"""The authenticated caller as the hot path sees it: who, which key, what it may use, until when."""

from __future__ import annotations

from ..core.types import ApiKey, Environment, Identity
from .roles import scopes_of


class Scopes:
    """Model scopes of an identity: exact names, ``prefix*`` patterns, or ``*`` for all."""

    __slots__ = ("_all", "_exact", "_prefixes", "_memo")

    def __init__(self, patterns: list[str]) -> None:
        self._all = "*" in patterns
        self._exact = frozenset(p for p in patterns if not p.endswith("*"))
        self._prefixes = tuple(p[:-1] for p in patterns if p.endswith("*") and p != "*")
        self._memo: dict[str, bool] = {}

    def allows(self, model: str) -> bool:
        hit = self._memo.get(model)
        if hit is None:
            hit = self._all or model in self._exact or model.startswith(self._prefixes)
            if len(self._memo) < 4096:  # bounded: callers choose model names
                self._memo[model] = hit
        return hit


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
        self.scopes = Scopes(identity.models if models is None else models)
        self.roles = frozenset(identity.roles)
        self.grants = scopes_of(identity.roles)
        ends = [t for t in (identity.expires_at, key.expires_at if key else None, expires_at) if t is not None]
        self.expires_at: float | None = min(ends) if ends else None
