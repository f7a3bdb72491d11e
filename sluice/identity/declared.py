"""The teams, identities and keys declared in the config file, made so in the store at start.

Each difference between the file and the store is one recorded change by the actor ``config``
(its audit entry's before/after cover just the rows it touched), all in one transaction; an
unchanged file changes nothing and records nothing. Replicas or workers starting together plan
against the same identity-state version and only the first one's plan lands: the others see
the version moved, read again, and find nothing left to do.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec

from ..core import clock
from ..core.config import DeclaredIdentity, DeclaredTeam
from ..core.errors import Conflict
from ..core.types import ApiKey, ChangeEvent, Identity, Plane, Team
from ..store import Store, Writes
from . import keys

ACTOR = "config"  # who made a change that the config file asked for
_ATTEMPTS = 5
_UNRECORDED = ("created_at", "hash", "display", "last_used_at")  # not a change of config; the hash stays out of entries
_GONE = "no longer in the config file"

Plan = list[tuple[Writes, ChangeEvent]]


def key_id(hasher: keys.Hasher, secret: str) -> str:
    """The stored id of a declared key: derived from its hash, so the same secret is the same key."""
    return f"cfg-{hasher.digest(secret)[:16]}"


async def sync(store: Store, hasher: keys.Hasher, declared: list[DeclaredIdentity],
               teams: list[DeclaredTeam] | None = None) -> int:
    """Make the store match the file; the number of changes recorded (0 when nothing differed).

    A revocation or disable made on the control plane sticks: it is never undone here.
    """
    for attempt in range(_ATTEMPTS):
        version = await store.identity_version()  # read before the rows: a change landing after moves it
        plan = await _plan(store, hasher, declared, teams or [])
        if not plan:
            return 0
        try:
            await store.apply_each(plan, expect_version=version)
            return len(plan)
        except Conflict as exc:  # another replica or an operator changed the store meanwhile: plan again
            if exc.code != "state_changed" or attempt == _ATTEMPTS - 1:
                raise
    return 0  # not reached


async def _plan(store: Store, hasher: keys.Hasher, declared: list[DeclaredIdentity], teams: list[DeclaredTeam]) -> Plan:
    now = clock.now()
    plan: Plan = []

    def change(writes: Writes, action: str, target: str, detail: dict) -> None:
        plan.append((writes, ChangeEvent(id=uuid.uuid4().hex, ts=now, actor=ACTOR, action=action, target=target,
                                         detail=detail)))

    for d in teams:
        old_team = await store.get_team(d.name)
        team = Team(name=d.name, owner=d.owner, created_at=old_team.created_at if old_team else now, created_by=ACTOR)
        if old_team is None:
            change(Writes().put_team(team), "team.create", team.name, {"owner": team.owner})
        elif old_team != team:
            change(Writes().put_team(team), "team.update", team.name, _diff(old_team, team))
    wanted: set[str] = set()
    for d in declared:
        ident = Identity(id=f"cfg-{d.name}", name=d.name, owner=d.owner, environment=d.environment, models=list(d.models),
                         created_at=now, created_by=ACTOR, expires_at=d.expires_at, source="config", team=d.team,
                         roles=list(d.roles))
        old = await store.get_identity(ident.id)
        if old is None:
            if await store.find_identity(d.name) is not None:
                raise Conflict(f"identity {d.name!r} exists in the store and cannot also be declared in config")
            change(Writes().put_identity(ident), "identity.create", ident.id,
                   {"name": d.name, "owner": d.owner, "environment": d.environment, "models": ident.models,
                    "team": d.team, "roles": ident.roles, "expires_at": d.expires_at})
        else:
            ident.created_at, ident.disabled_at = old.created_at, old.disabled_at
            if old != ident:
                change(Writes().put_identity(ident), "identity.update", ident.id, _diff(old, ident))
        plane: Plane = "data" if "invoker" in d.roles else "control"
        for secret in d.keys:
            kid = key_id(hasher, secret)
            wanted.add(kid)
            prior = await store.get_key(kid)
            key = ApiKey(id=kid, identity_id=ident.id, hash=hasher.digest(secret), display=keys.display(secret),
                         created_at=prior.created_at if prior else now, created_by=ACTOR, expires_at=None,
                         source="config", plane=plane, last_used_at=prior.last_used_at if prior else None,
                         revoked_at=prior.revoked_at if prior else None)
            if prior is None:
                change(Writes().put_key(key), "key.issue", kid, {"identity_id": ident.id, "plane": plane, "expires_at": None})
            elif prior != key:
                change(Writes().put_key(key), "key.update", kid, _diff(prior, key))
    # only what the file put there: the store's other credentials (any number) are not the file's to reconcile
    for k in await store.list_keys(source="config"):
        if k.id not in wanted and k.revoked_at is None:
            change(Writes().revoke_key(k.id, now), "key.revoke", k.id, {"identity_id": k.identity_id, "reason": _GONE})
    names = {d.name for d in declared}
    for gone in await store.list_identities(source="config"):
        if gone.name not in names:
            gone.disabled_at = now
            change(Writes().put_identity(gone), "identity.disable", gone.id, {"reason": _GONE})
    return plan


def _diff(old: Any, new: Any) -> dict[str, dict[str, Any]]:
    """The fields that differ, each as {"from", "to"} (as the control plane's own updates record them)."""
    a, b = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    return {f: {"from": a[f], "to": b[f]} for f in a if f not in _UNRECORDED and a[f] != b[f]}


async def revoked(store: Store, hasher: keys.Hasher, declared: list[DeclaredIdentity]) -> list[str]:
    """The names of declared identities that hold a declared key the store has revoked, or that are disabled."""
    out = []
    for d in declared:
        ident = await store.get_identity(f"cfg-{d.name}")
        if ident is not None and ident.disabled_at is not None:
            out.append(f"identity {d.name} is disabled")
        for secret in d.keys:
            key = await store.get_key(key_id(hasher, secret))
            if key is not None and key.revoked_at is not None:
                out.append(f"a key of identity {d.name} ({key.display}) is revoked")
    return out
