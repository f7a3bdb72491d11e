"""The inventory of every identity in the inference path, with the flags an access review needs."""

from __future__ import annotations

from collections import defaultdict

import msgspec

from ..core.types import ApiKey, Identity, IdentityActivity

_DAY = 86400.0
UNUSED_DAYS = 30
EXPIRING_DAYS = 7


class CredentialRow(msgspec.Struct, kw_only=True):
    id: str
    display: str
    plane: str
    source: str
    created_at: float
    created_by: str
    age_days: float
    expires_at: float | None
    last_used_at: float | None
    active: bool


class InventoryRow(msgspec.Struct, kw_only=True):
    """One identity as an auditor sees it."""

    id: str
    name: str
    owner: str
    team: str | None
    environment: str
    roles: list[str]
    models: list[str]
    created_at: float
    expires_at: float | None
    disabled: bool
    credentials: list[CredentialRow]
    last_used_at: float | None
    models_used: list[str]
    unused_scopes: list[str]
    flags: list[str]


def _matches(pattern: str, model: str) -> bool:
    return pattern == "*" or pattern == model or (pattern.endswith("*") and model.startswith(pattern[:-1]))


def build(identities: list[Identity], keys: list[ApiKey], activity: list[IdentityActivity], now: float) -> list[InventoryRow]:
    """Rows for every identity, flagged: never-used, unused-30d, no-expiry, expiring-7d, broader-than-use."""
    keys_of: dict[str, list[ApiKey]] = defaultdict(list)
    for k in keys:
        keys_of[k.identity_id].append(k)
    used: dict[str, dict[str, float]] = defaultdict(dict)
    for a in activity:
        if a.model is not None:
            used[a.identity_id][a.model] = a.last_at
    rows = []
    for ident in identities:
        creds = [
            CredentialRow(
                id=k.id, display=k.display, plane=k.plane, source=k.source, created_at=k.created_at,
                created_by=k.created_by, age_days=round((now - k.created_at) / _DAY, 2), expires_at=k.expires_at,
                last_used_at=k.last_used_at,
                active=k.revoked_at is None and (k.expires_at is None or k.expires_at > now),
            )
            for k in keys_of.get(ident.id, [])
        ]
        live = [c for c in creds if c.active]
        stamps = [c.last_used_at for c in creds if c.last_used_at] + list(used[ident.id].values())
        last = max(stamps) if stamps else None
        models_used = sorted(used[ident.id])
        unused = [p for p in ident.models if not any(_matches(p, m) for m in models_used)]
        flags = []
        if last is None:
            flags.append("never-used")
        elif now - last > UNUSED_DAYS * _DAY:
            flags.append("unused-30d")
        ends = [e for e in [ident.expires_at, *(c.expires_at for c in live)] if e is not None]
        if ident.expires_at is None and any(c.expires_at is None for c in live):
            flags.append("no-expiry")
        if ends and min(ends) - now < EXPIRING_DAYS * _DAY:
            flags.append("expiring-7d")
        if "invoker" in ident.roles and (unused or any(p.endswith("*") for p in ident.models)) and last is not None:
            # wildcards are broader than any finite use; named models never called are unused grants
            flags.append("broader-than-use")
        rows.append(InventoryRow(
            id=ident.id, name=ident.name, owner=ident.owner, team=ident.team, environment=ident.environment,
            roles=list(ident.roles), models=list(ident.models), created_at=ident.created_at, expires_at=ident.expires_at,
            disabled=ident.disabled_at is not None, credentials=creds, last_used_at=last, models_used=models_used,
            unused_scopes=unused, flags=flags,
        ))
    return rows
