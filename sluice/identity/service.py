"""Control-plane operations on identities, teams, roles and keys: each writes the store,
updates the in-memory registry at once, and records who changed what."""

from __future__ import annotations

import re
import uuid

from ..core import clock
from ..core.config import DeclaredIdentity, DeclaredTeam, Security
from ..core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from ..core.types import ROLES, ApiKey, ChangeEvent, Environment, Identity, Plane, Team
from ..store import Store
from . import keys
from .registry import CredentialRegistry
from .roles import CONTROL_ROLES, scopes_of

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_DAY = 86400.0


class Actor:
    """Who makes a control-plane change, what it may do, and from where."""

    __slots__ = ("name", "source_ip", "identity_id", "roles", "grants")

    def __init__(self, name: str, source_ip: str | None = None, *, identity_id: str | None = None,
                 roles: frozenset[str] = frozenset(ROLES)) -> None:
        self.name = name
        self.source_ip = source_ip
        self.identity_id = identity_id
        self.roles = roles
        self.grants = scopes_of(roles)

    def require(self, scope: str) -> None:
        if scope not in self.grants:
            raise PermissionDenied(f"This action needs the scope '{scope}', which your roles do not grant.",
                                   code="missing_scope")


SYSTEM = Actor("system")


def _check_name(name: str, param: str = "name") -> None:
    if not _NAME.match(name):
        raise InvalidRequest(f"{param} must be 1-63 lowercase letters, digits, '.', '_' or '-'", param=param)


class IdentityService:
    """Creates, lists, changes and retires identities, teams and their credentials."""

    def __init__(self, store: Store, registry: CredentialRegistry, hasher: keys.Hasher, security: Security) -> None:
        self._store = store
        self._registry = registry
        self._hasher = hasher
        self._security = security

    async def load(self) -> None:
        """Fill the registry with every live identity and key in the store."""
        self._registry.load(await self._store.list_identities(), await self._store.list_keys())

    async def sync_declared(self, declared: list[DeclaredIdentity], teams: list[DeclaredTeam] | None = None) -> None:
        """Make the store match the teams, identities and keys declared in the config file."""
        now = clock.now()
        for t in teams or []:
            old_team = await self._store.get_team(t.name)
            await self._store.put_team(Team(name=t.name, owner=t.owner, created_at=old_team.created_at if old_team else now,
                                            created_by="config"))
        wanted_keys: set[str] = set()
        for d in declared:
            ident = Identity(
                id=f"cfg-{d.name}", name=d.name, owner=d.owner, environment=d.environment,
                models=list(d.models), created_at=now, created_by="config", expires_at=d.expires_at,
                source="config", team=d.team, roles=list(d.roles),
            )
            old = await self._store.get_identity(ident.id)
            if old is not None:
                ident.created_at = old.created_at
            elif await self._store.find_identity(d.name) is not None:
                raise Conflict(f"identity {d.name!r} exists in the store and cannot also be declared in config")
            await self._store.put_identity(ident)
            plane: Plane = "data" if "invoker" in d.roles else "control"
            for secret in d.keys:
                digest = self._hasher.digest(secret)
                key_id = f"cfg-{digest[:16]}"
                wanted_keys.add(key_id)
                prior = await self._store.get_key(key_id)
                await self._store.put_key(ApiKey(
                    id=key_id, identity_id=ident.id, hash=digest, display=keys.display(secret),
                    created_at=prior.created_at if prior else now, created_by="config", expires_at=None,
                    source="config", plane=plane, last_used_at=prior.last_used_at if prior else None,
                ))
        for k in await self._store.list_keys():
            if k.source == "config" and k.id not in wanted_keys and k.revoked_at is None:
                await self._store.revoke_key(k.id, now)
        names = {d.name for d in declared}
        for ident in await self._store.list_identities():
            if ident.source == "config" and ident.name not in names:
                ident.disabled_at = now
                await self._store.put_identity(ident)

    # identities
    async def create_identity(
        self, actor: Actor, *, name: str, owner: str, environment: Environment, models: list[str],
        expires_at: float | None = None, team: str | None = None, roles: list[str] | None = None,
    ) -> Identity:
        _check_name(name)
        if not owner.strip():
            raise InvalidRequest("owner must not be empty", param="owner")
        roles = list(roles) if roles is not None else ["invoker"]
        self._check_grant(actor, set(), set(roles), target_id=None)
        await self._check_team(team)
        if await self._store.find_identity(name) is not None:
            raise Conflict(f"an identity named {name!r} already exists", param="name")
        now = clock.now()
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("expires_at must be in the future", param="expires_at")
        ident = Identity(
            id=f"id-{uuid.uuid4().hex[:16]}", name=name, owner=owner, environment=environment,
            models=models, created_at=now, created_by=actor.name, expires_at=expires_at, team=team, roles=roles,  # type: ignore[arg-type]
        )
        await self._store.put_identity(ident)
        await self.record(actor, "identity.create", ident.id,
                           {"name": name, "owner": owner, "environment": environment, "models": models, "team": team, "roles": roles})
        return ident

    async def update_identity(self, actor: Actor, identity_id: str, *, models: list[str] | None = None,
                              team: str | None = None, owner: str | None = None, clear_team: bool = False) -> Identity:
        """Change an identity's model scopes, team or owner; effective on the next request."""
        ident = await self.get_identity(identity_id)
        if ident.disabled_at is not None:
            raise Conflict("the identity is disabled")
        detail: dict = {}
        if models is not None:
            detail["models"] = {"from": ident.models, "to": models}
            ident.models = models
        if team is not None or clear_team:
            await self._check_team(team)
            detail["team"] = {"from": ident.team, "to": team}
            ident.team = team
        if owner is not None:
            if not owner.strip():
                raise InvalidRequest("owner must not be empty", param="owner")
            detail["owner"] = {"from": ident.owner, "to": owner}
            ident.owner = owner
        await self._store.put_identity(ident)
        self._registry.put_identity(ident, await self._store.list_keys(identity_id))
        await self.record(actor, "identity.update", identity_id, detail)
        return ident

    async def set_roles(self, actor: Actor, identity_id: str, roles: list[str]) -> Identity:
        """Replace an identity's roles; only with roles the actor holds, never on itself."""
        ident = await self.get_identity(identity_id)
        self._check_grant(actor, set(ident.roles), set(roles), target_id=identity_id)
        before = list(ident.roles)
        ident.roles = sorted(set(roles), key=ROLES.index)  # type: ignore[assignment]
        await self._store.put_identity(ident)
        keys_of = await self._store.list_keys(identity_id)
        self._registry.put_identity(ident, keys_of)
        # A control key of an identity left with no control role dies with the role.
        if not CONTROL_ROLES & set(ident.roles):
            for k in keys_of:
                if k.plane == "control" and k.revoked_at is None:
                    await self._revoke(actor, k, reason="roles removed")
        await self.record(actor, "identity.roles", identity_id, {"from": before, "to": ident.roles})
        return ident

    def _check_grant(self, actor: Actor, before: set[str], after: set[str], *, target_id: str | None) -> None:
        unknown = after - set(ROLES)
        if unknown:
            raise InvalidRequest(f"unknown roles: {', '.join(sorted(unknown))}; known: {', '.join(ROLES)}", param="roles")
        changed = before ^ after
        if not changed or changed == {"invoker"} and target_id is None:
            return  # a new invoker-only identity needs no grant
        actor.require("roles:grant")
        if target_id is not None and target_id == actor.identity_id:
            raise PermissionDenied("No principal may change its own roles.", code="self_grant")
        beyond = changed - actor.roles
        if beyond:
            raise PermissionDenied(f"You cannot grant or remove roles you do not hold: {', '.join(sorted(beyond))}.",
                                   code="grant_beyond_own")

    async def get_identity(self, identity_id: str) -> Identity:
        ident = await self._store.get_identity(identity_id)
        if ident is None:
            raise NotFound(f"no identity {identity_id!r}")
        return ident

    async def list_identities(self, include_disabled: bool = False) -> list[Identity]:
        return await self._store.list_identities(include_disabled=include_disabled)

    async def disable_identity(self, actor: Actor, identity_id: str) -> Identity:
        """Disable an identity and revoke every key it holds, effective on the next request."""
        ident = await self.get_identity(identity_id)
        await self._retire(actor, ident)
        await self.record(actor, "identity.disable", identity_id, {})
        return ident

    async def _retire(self, actor: Actor, ident: Identity) -> None:
        now = clock.now()
        ident.disabled_at = ident.disabled_at or now
        await self._store.put_identity(ident)
        keys_of = await self._store.list_keys(ident.id)
        self._registry.put_identity(ident, keys_of)
        for k in keys_of:
            await self._store.revoke_key(k.id, now)

    async def offboard(self, actor: Actor, owner: str, reassign_to: str | None) -> dict:
        """Everything an owner owns, in one recorded step: reassigned, or disabled and revoked."""
        if reassign_to is not None and not reassign_to.strip():
            raise InvalidRequest("reassign_to must not be empty", param="reassign_to")
        touched, teams = [], []
        for ident in await self._store.list_identities():
            if ident.owner != owner:
                continue
            touched.append(ident.id)
            if reassign_to is None:
                await self._retire(actor, ident)
            else:
                ident.owner = reassign_to
                await self._store.put_identity(ident)
                self._registry.put_identity(ident, await self._store.list_keys(ident.id))
        for team in await self._store.list_teams():
            if team.owner == owner:
                team.owner = reassign_to or "unassigned"
                await self._store.put_team(team)
                teams.append(team.name)
        action = "reassigned" if reassign_to else "disabled"
        result = {"owner": owner, "action": action, "reassign_to": reassign_to, "identities": touched, "teams": teams}
        await self.record(actor, "owner.offboard", owner, result)
        return result

    # teams
    async def _check_team(self, team: str | None) -> None:
        if team is not None and await self._store.get_team(team) is None:
            raise InvalidRequest(f"no team {team!r}; create it first", param="team")

    async def create_team(self, actor: Actor, name: str, owner: str) -> Team:
        _check_name(name)
        if not owner.strip():
            raise InvalidRequest("owner must not be empty", param="owner")
        if await self._store.get_team(name) is not None:
            raise Conflict(f"a team named {name!r} already exists", param="name")
        team = Team(name=name, owner=owner, created_at=clock.now(), created_by=actor.name)
        await self._store.put_team(team)
        await self.record(actor, "team.create", name, {"owner": owner})
        return team

    async def list_teams(self) -> list[Team]:
        return await self._store.list_teams()

    # keys
    async def issue_key(self, actor: Actor, identity_id: str, *, ttl_days: float | None = None,
                        plane: Plane = "data") -> tuple[ApiKey, str]:
        """A new key for an identity; the secret is returned here and never again."""
        ident = await self.get_identity(identity_id)
        if ident.disabled_at is not None:
            raise Conflict("the identity is disabled")
        if plane == "data" and "invoker" not in ident.roles:
            raise Conflict("the identity has no invoker role, so it cannot hold a data-plane key")
        if plane == "control":
            control = CONTROL_ROLES & set(ident.roles)
            if not control:
                raise Conflict("the identity has no control-plane role, so it cannot hold a control-plane key")
            beyond = control - actor.roles
            if beyond:  # a key is as strong as the roles behind it
                raise PermissionDenied(f"You cannot issue a key carrying roles you do not hold: {', '.join(sorted(beyond))}.",
                                       code="grant_beyond_own")
        ttl = self._ttl(ttl_days)
        secret = keys.generate(ident.environment, kind="data" if plane == "data" else "admin")
        now = clock.now()
        key = ApiKey(
            id=f"key-{uuid.uuid4().hex[:16]}", identity_id=ident.id, hash=self._hasher.digest(secret),
            display=keys.display(secret), created_at=now, created_by=actor.name, expires_at=now + ttl, plane=plane,
        )
        await self._store.put_key(key)
        self._registry.add(ident, key)
        await self.record(actor, "key.issue", key.id, {"identity_id": ident.id, "plane": plane, "expires_at": key.expires_at})
        return key, secret

    async def list_keys(self, identity_id: str) -> list[ApiKey]:
        await self.get_identity(identity_id)
        return await self._store.list_keys(identity_id)

    async def get_key(self, key_id: str) -> ApiKey:
        key = await self._store.get_key(key_id)
        if key is None:
            raise NotFound(f"no key {key_id!r}")
        return key

    async def revoke_key(self, actor: Actor, key_id: str) -> ApiKey:
        """Revoke a key (and every token minted from it); the registry forgets it before this returns."""
        return await self._revoke(actor, await self.get_key(key_id))

    async def _revoke(self, actor: Actor, key: ApiKey, reason: str | None = None) -> ApiKey:
        self._registry.remove(key.id)
        now = clock.now()
        await self._store.revoke_key(key.id, now)
        await self.record(actor, "key.revoke", key.id, {"identity_id": key.identity_id, **({"reason": reason} if reason else {})})
        key.revoked_at = key.revoked_at or now
        return key

    async def rotate_key(self, actor: Actor, key_id: str, *, overlap_seconds: float = 0.0,
                         ttl_days: float | None = None) -> tuple[ApiKey, str]:
        """Issue a successor key; the old one dies now, or after the overlap."""
        old = await self.get_key(key_id)
        if old.revoked_at is not None:
            raise Conflict("the key is revoked and cannot be rotated")
        if old.source == "config":
            raise Conflict("keys declared in the config file are rotated in the config file")
        new, secret = await self.issue_key(actor, old.identity_id, ttl_days=ttl_days, plane=old.plane)
        if overlap_seconds <= 0:
            await self._revoke(actor, old, reason=f"rotated to {new.id}")
        else:
            ident = await self.get_identity(old.identity_id)
            ends = clock.now() + overlap_seconds
            old.expires_at = min(old.expires_at, ends) if old.expires_at else ends
            await self._store.put_key(old)
            self._registry.add(ident, old)
        await self.record(actor, "key.rotate", key_id, {"successor": new.id, "overlap_seconds": overlap_seconds})
        return new, secret

    def _ttl(self, ttl_days: float | None) -> float:
        days = self._security.default_key_ttl_days if ttl_days is None else ttl_days
        if days <= 0 or days > self._security.max_key_ttl_days:
            raise InvalidRequest(f"ttl_days must be in (0, {self._security.max_key_ttl_days:g}]", param="ttl_days")
        return days * _DAY

    async def record(self, actor: Actor, action: str, target: str, detail: dict) -> None:
        """Record a control-plane change (here, or made elsewhere: routing, limits, keys) in the change log."""
        await self._store.record_change(ChangeEvent(
            id=uuid.uuid4().hex, ts=clock.now(), actor=actor.name, action=action,
            target=target, source_ip=actor.source_ip, detail=detail,
        ))
