"""Control-plane operations on identities, teams, roles and keys: each writes the store and
the record of who changed what in one transaction, then updates the in-memory registry at once
(other replicas learn of it through the identity-state version, see ``sync``)."""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Callable

from ..core import clock
from ..core.config import DeclaredIdentity, DeclaredTeam, Security
from ..core.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from ..core.types import ROLES, ApiKey, ChangeEvent, Environment, Identity, Plane, Team
from ..store import Store, Writes
from ..store.response_records import of_identities
from . import keys
from .declared import revoked, sync
from .registry import CredentialRegistry
from .roles import CONTROL_ROLES, scopes_of

log = logging.getLogger("sluice.identity")

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_DAY = 86400.0
_OWNER_MAX = 256


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


def _check_owner(owner: str, param: str = "owner") -> None:
    if not owner.strip():
        raise InvalidRequest(f"{param} must not be empty", param=param)
    if len(owner) > _OWNER_MAX:  # the store's column (and the change log's target) holds no more
        raise InvalidRequest(f"{param} must be at most {_OWNER_MAX} characters", param=param)


class IdentityService:
    """Creates, lists, changes and retires identities, teams and their credentials."""

    def __init__(self, store: Store, registry: CredentialRegistry, hasher: keys.Hasher, security: Security) -> None:
        self._store = store
        self._registry = registry
        self._hasher = hasher
        # called with the ids of identities just disabled or offboarded (the response cache purges what they made)
        self.on_retire: list[Callable[[list[str]], None]] = []
        # identities whose owner was offboarded (not reassigned): what they kept elsewhere goes (batch files)
        self.on_offboard: list[Callable[[list[str]], None]] = []
        self._security = security
        self._version: int | None = None  # the identity-state version the registry holds (``load``)
        self.patches = self.whole_loads = 0

    async def load(self, version: int | None = None) -> bool:
        """Bring the registry to the store's identity-state ``version`` (read by the caller before this): patched
        with what changed since the version it holds when the store can say exactly what that was, else filled
        whole with every live identity and key. False if this process changed the registry meanwhile (the
        caller loads again). Without ``version``, whole, and the next load whole too."""
        generation = self._registry.generation
        held = self._version  # the registry is left as it was by an exception or a False below
        if held is not None and version is not None and held <= version:
            changes = await self._store.identity_changes(held, version)
            if changes is not None:
                idents, keys_of = await self._store.identity_rows(changes.identities, changes.keys)
                if not self._registry.patch(idents, keys_of, changes.keys, generation=generation):
                    return False
                self._version, self.patches = version, self.patches + 1
                return True
        if not self._registry.load(await self._store.list_identities(), await self._store.list_keys(),
                                   generation=generation):
            return False
        self._version, self.whole_loads = version, self.whole_loads + 1
        return True

    async def sync_declared(self, declared: list[DeclaredIdentity], teams: list[DeclaredTeam] | None = None) -> int:
        """Make the store match the config file, each difference a change recorded by ``config`` (``declared``)."""
        return await sync(self._store, self._hasher, declared, teams)

    async def revoked_declared(self, declared: list[DeclaredIdentity]) -> list[str]:
        """The names of declared identities that hold a declared key the store has revoked, or that are disabled."""
        return await revoked(self._store, self._hasher, declared)

    # identities
    async def create_identity(
        self, actor: Actor, *, name: str, owner: str, environment: Environment, models: list[str],
        expires_at: float | None = None, team: str | None = None, roles: list[str] | None = None,
    ) -> Identity:
        _check_name(name)
        _check_owner(owner)
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
        await self._store.apply(Writes().put_identity(ident), self._event(
            actor, "identity.create", ident.id,
            {"name": name, "owner": owner, "environment": environment, "models": models, "team": team, "roles": roles}))
        self._registry.put_identity(ident, [])
        return ident

    async def update_identity(self, actor: Actor, identity_id: str, *, models: list[str] | None = None,
                              team: str | None = None, owner: str | None = None, clear_team: bool = False) -> Identity:
        """Change an identity's model scopes, team or owner; effective on the next request."""
        ident = await self.get_identity(identity_id)
        self._check_target(actor, ident)
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
            _check_owner(owner)
            detail["owner"] = {"from": ident.owner, "to": owner}
            ident.owner = owner
        await self._store.apply(Writes().put_identity(ident), self._event(actor, "identity.update", identity_id, detail))
        self._registry.put_identity(ident, await self._store.list_keys(identity_id))
        return ident

    async def set_roles(self, actor: Actor, identity_id: str, roles: list[str]) -> Identity:
        """Replace an identity's roles; only with roles the actor holds, never on itself."""
        ident = await self.get_identity(identity_id)
        self._check_grant(actor, set(ident.roles), set(roles), target_id=identity_id)
        before = list(ident.roles)
        ident.roles = sorted(set(roles), key=ROLES.index)  # type: ignore[assignment]
        keys_of = await self._store.list_keys(identity_id)
        writes = Writes().put_identity(ident)
        events = [self._event(actor, "identity.roles", identity_id, {"from": before, "to": ident.roles})]
        # A control key of an identity left with no control role dies with the role.
        if not CONTROL_ROLES & set(ident.roles):
            now = clock.now()
            for k in keys_of:
                if k.plane == "control" and k.revoked_at is None:
                    writes.revoke_key(k.id, now)
                    k.revoked_at = now
                    events.append(self._event(actor, "key.revoke", k.id,
                                              {"identity_id": identity_id, "reason": "roles removed"}))
        await self._store.apply(writes, *events)
        self._registry.put_identity(ident, keys_of)
        for k in keys_of:
            if k.revoked_at is not None:
                self._registry.remove(k.id)
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

    @staticmethod
    def _check_target(actor: Actor, target: Identity) -> None:
        """Separation of duties: act on an identity (change, disable, enable, offboard, move, its
        keys) only when holding every control role it holds; otherwise a weaker role could retire
        or take over a stronger one. ``invoker`` carries no control-plane power, so it is not counted."""
        beyond = (CONTROL_ROLES & set(target.roles)) - actor.roles
        if beyond:
            raise PermissionDenied(f"You cannot act on an identity holding roles you do not hold: "
                                   f"{', '.join(sorted(beyond))}.", code="grant_beyond_own")

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
        self._check_target(actor, ident)
        writes = Writes()
        keys_of = await self._retire(ident, writes)
        await self._store.apply(writes, self._event(actor, "identity.disable", identity_id, {}))
        self._registry.put_identity(ident, keys_of)
        self._retired([ident.id])
        return ident

    def _retired(self, ids: list[str], hooks: list[Callable[[list[str]], None]] | None = None) -> None:
        for hook in self.on_retire if hooks is None else hooks:
            try:
                hook(ids)
            except Exception:  # a hook failing must not undo what the store already holds
                log.exception("identity retirement hook failed")

    async def enable_identity(self, actor: Actor, identity_id: str) -> Identity:
        """Undo a disable: the identity and the keys its disabling revoked live again (keys revoked
        on their own stay revoked). The one explicit way back for a declared identity."""
        ident = await self.get_identity(identity_id)
        self._check_target(actor, ident)
        if ident.disabled_at is None:
            raise Conflict("the identity is not disabled")
        now = clock.now()
        if ident.expires_at is not None and ident.expires_at <= now:
            raise Conflict("the identity has expired; create a new one")
        writes = Writes()
        restored = []
        keys_of = await self._store.list_keys(identity_id)
        for k in keys_of:
            if k.revoked_at == ident.disabled_at and (k.expires_at is None or k.expires_at > now):
                k.revoked_at = None
                writes.put_key(k)
                restored.append(k.id)
        ident.disabled_at = None
        writes.put_identity(ident)
        await self._store.apply(writes, self._event(actor, "identity.enable", identity_id, {"keys": restored}))
        self._registry.put_identity(ident, keys_of)
        return ident

    async def _retire(self, ident: Identity, writes: Writes) -> list[ApiKey]:
        """Disable an identity and revoke its keys, all at one instant (which ``enable`` undoes)."""
        now = clock.now()
        ident.disabled_at = ident.disabled_at or now
        writes.put_identity(ident)
        keys_of = await self._store.list_keys(ident.id)
        for k in keys_of:
            if k.revoked_at is None:
                writes.revoke_key(k.id, ident.disabled_at)
                k.revoked_at = ident.disabled_at
        return keys_of

    async def offboard(self, actor: Actor, owner: str, reassign_to: str | None) -> dict:
        """Everything an owner owns, in one recorded step: reassigned, or disabled and revoked."""
        _check_owner(owner)
        if reassign_to is not None:
            _check_owner(reassign_to, "reassign_to")
        owned = [i for i in await self._store.list_identities() if i.owner == owner]
        for ident in owned:  # all or nothing: one identity beyond the actor refuses the whole step
            self._check_target(actor, ident)
        writes, touched, teams, retired = Writes(), [], [], []
        for ident in owned:
            touched.append(ident.id)
            if reassign_to is None:
                retired.append((ident, await self._retire(ident, writes)))
            else:
                ident.owner = reassign_to
                writes.put_identity(ident)
        for team in await self._store.list_teams():
            if team.owner == owner:
                team.owner = reassign_to or "unassigned"
                writes.put_team(team)
                teams.append(team.name)
        if reassign_to is None and touched:  # their agent memory goes with them, in the same step
            writes.delete(*of_identities(touched))
        action = "reassigned" if reassign_to else "disabled"
        result = {"owner": owner, "action": action, "reassign_to": reassign_to, "identities": touched, "teams": teams}
        await self._store.apply(writes, self._event(actor, "owner.offboard", owner, result))
        for ident, keys_of in retired:
            self._registry.put_identity(ident, keys_of)
        if retired:
            self._retired([ident.id for ident, _ in retired])
            self._retired([ident.id for ident, _ in retired], self.on_offboard)
        if reassign_to is not None:
            for ident in owned:
                self._registry.put_identity(ident, await self._store.list_keys(ident.id))
        return result

    # teams
    async def _check_team(self, team: str | None) -> None:
        if team is not None and await self._store.get_team(team) is None:
            raise InvalidRequest(f"no team {team!r}; create it first", param="team")

    async def create_team(self, actor: Actor, name: str, owner: str) -> Team:
        _check_name(name)
        _check_owner(owner)
        if await self._store.get_team(name) is not None:
            raise Conflict(f"a team named {name!r} already exists", param="name")
        team = Team(name=name, owner=owner, created_at=clock.now(), created_by=actor.name)
        await self._store.apply(Writes().put_team(team), self._event(actor, "team.create", name, {"owner": owner}))
        return team

    async def list_teams(self) -> list[Team]:
        return await self._store.list_teams()

    # keys
    async def issue_key(self, actor: Actor, identity_id: str, *, ttl_days: float | None = None,
                        plane: Plane = "data") -> tuple[ApiKey, str]:
        """A new key for an identity; the secret is returned here and never again."""
        ident, key, secret, event = await self._new_key(actor, identity_id, ttl_days=ttl_days, plane=plane)
        await self._store.apply(Writes().put_key(key), event)
        self._registry.add(ident, key)
        return key, secret

    async def _new_key(self, actor: Actor, identity_id: str, *, ttl_days: float | None,
                       plane: Plane) -> tuple[Identity, ApiKey, str, ChangeEvent]:
        ident = await self.get_identity(identity_id)
        self._check_target(actor, ident)
        if ident.disabled_at is not None:
            raise Conflict("the identity is disabled")
        if plane == "data" and "invoker" not in ident.roles:
            raise Conflict("the identity has no invoker role, so it cannot hold a data-plane key")
        if plane == "control" and not CONTROL_ROLES & set(ident.roles):
            raise Conflict("the identity has no control-plane role, so it cannot hold a control-plane key")
        ttl = self._ttl(ttl_days)
        secret = keys.generate(ident.environment, kind="data" if plane == "data" else "admin")
        now = clock.now()
        expires_at = now + ttl
        if ident.expires_at is not None:  # a key never outlives its identity
            expires_at = min(expires_at, ident.expires_at)
        key = ApiKey(
            id=f"key-{uuid.uuid4().hex[:16]}", identity_id=ident.id, hash=self._hasher.digest(secret),
            display=keys.display(secret), created_at=now, created_by=actor.name, expires_at=expires_at, plane=plane,
        )
        event = self._event(actor, "key.issue", key.id, {"identity_id": ident.id, "plane": plane, "expires_at": key.expires_at})
        return ident, key, secret, event

    async def list_keys(self, identity_id: str) -> list[ApiKey]:
        await self.get_identity(identity_id)
        return await self._store.list_keys(identity_id)

    async def get_key(self, key_id: str) -> ApiKey:
        key = await self._store.get_key(key_id)
        if key is None:
            raise NotFound(f"no key {key_id!r}")
        return key

    async def find_keys(self, text: str) -> list[tuple[ApiKey, Identity | None]]:
        """The keys a leaked string names, with their identities: the whole key (matched by its HMAC, so the
        secret is never compared or kept), its display form as ``sluice keys check`` prints it
        (``slk_dev_ns9M…yEmr``, or with ``...``), or a key id. Several only when display forms collide."""
        text = text.strip()
        every = await self._store.list_keys()
        if keys.inspect(text) is not None:
            digest = self._hasher.digest(text)
            found = [k for k in every if hmac.compare_digest(k.hash, digest)]
        else:
            shown = text.replace("...", "…")
            found = [k for k in every if k.id == text or k.display == shown]
        idents = {i.id: i for i in await self._store.list_identities(include_disabled=True)}
        return [(k, idents.get(k.identity_id)) for k in found]

    async def revoke_key(self, actor: Actor, key_id: str) -> ApiKey:
        """Revoke a key (and every token minted from it); the registry forgets it before this returns."""
        key = await self.get_key(key_id)
        self._check_target(actor, await self.get_identity(key.identity_id))
        now = clock.now()
        await self._store.apply(Writes().revoke_key(key.id, now),
                                self._event(actor, "key.revoke", key.id, {"identity_id": key.identity_id}))
        self._registry.remove(key.id)
        key.revoked_at = key.revoked_at or now
        return key

    async def revoke_all(self, actor: Actor, *, identity_id: str | None = None, owner: str | None = None,
                         reason: str = "") -> dict:
        """Incident switch: every live credential (both planes) of one identity or of every identity of an
        owner, revoked in one recorded step; the identities stay, so new keys can be issued at once."""
        if (identity_id is None) == (owner is None):
            raise InvalidRequest("name exactly one of identity_id and owner", param="identity_id")
        if identity_id is not None:
            idents = [await self.get_identity(identity_id)]
        else:
            _check_owner(owner)  # type: ignore[arg-type]
            idents = [i for i in await self._store.list_identities(include_disabled=True) if i.owner == owner]
            if not idents:
                raise NotFound(f"no identity is owned by {owner!r}")
        for ident in idents:  # all or nothing, as offboarding
            self._check_target(actor, ident)
        now, writes, revoked = clock.now(), Writes(), []
        for ident in idents:
            for k in await self._store.list_keys(ident.id):
                if k.revoked_at is None:
                    writes.revoke_key(k.id, now)
                    revoked.append(k.id)
        target = identity_id or owner
        result = {"identities": [i.id for i in idents], "revoked": revoked, "reason": reason}
        await self._store.apply(writes, self._event(actor, "switch.revoke", target, result))  # type: ignore[arg-type]
        for key_id in revoked:
            self._registry.remove(key_id)
        return result

    async def rotate_key(self, actor: Actor, key_id: str, *, overlap_seconds: float = 0.0,
                         ttl_days: float | None = None) -> tuple[ApiKey, str]:
        """Issue a successor key; the old one dies now, or after the overlap."""
        old = await self.get_key(key_id)
        if old.revoked_at is not None:
            raise Conflict("the key is revoked and cannot be rotated")
        if old.source == "config":
            raise Conflict("keys declared in the config file are rotated in the config file")
        ident, new, secret, issued = await self._new_key(actor, old.identity_id, ttl_days=ttl_days, plane=old.plane)
        writes = Writes().put_key(new)
        events = [issued]
        now = clock.now()
        if overlap_seconds <= 0:
            writes.revoke_key(old.id, now)
            old.revoked_at = now
            events.append(self._event(actor, "key.revoke", old.id,
                                      {"identity_id": old.identity_id, "reason": f"rotated to {new.id}"}))
        else:
            ends = now + overlap_seconds
            old.expires_at = min(old.expires_at, ends) if old.expires_at else ends
            writes.put_key(old)
        events.append(self._event(actor, "key.rotate", key_id, {"successor": new.id, "overlap_seconds": overlap_seconds}))
        await self._store.apply(writes, *events)
        self._registry.add(ident, new)
        if old.revoked_at is not None:
            self._registry.remove(old.id)
        else:
            self._registry.add(ident, old)
        return new, secret

    def _ttl(self, ttl_days: float | None) -> float:
        days = self._security.default_key_ttl_days if ttl_days is None else ttl_days
        if days <= 0 or days > self._security.max_key_ttl_days:
            raise InvalidRequest(f"ttl_days must be in (0, {self._security.max_key_ttl_days:g}]", param="ttl_days")
        return days * _DAY

    @staticmethod
    def _event(actor: Actor, action: str, target: str, detail: dict) -> ChangeEvent:
        return ChangeEvent(id=uuid.uuid4().hex, ts=clock.now(), actor=actor.name, action=action,
                           target=target, source_ip=actor.source_ip, detail=detail)

    async def record(self, actor: Actor, action: str, target: str, detail: dict) -> None:
        """Record a control-plane change made elsewhere (routing, limits, signing keys) in the change log."""
        await self._store.record_change(self._event(actor, action, target, detail))
