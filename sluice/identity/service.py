"""Control-plane operations on identities and keys: each writes the store, updates the
in-memory registry at once, and records who changed what."""

from __future__ import annotations

import re
import uuid

from ..core import clock
from ..core.config import DeclaredIdentity, Security
from ..core.errors import Conflict, InvalidRequest, NotFound
from ..core.types import ApiKey, ChangeEvent, Environment, Identity
from ..store import Store
from . import keys
from .registry import CredentialRegistry

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_DAY = 86400.0


class Actor:
    """Who makes a control-plane change and from where, for the change log."""

    __slots__ = ("name", "source_ip")

    def __init__(self, name: str, source_ip: str | None = None) -> None:
        self.name = name
        self.source_ip = source_ip


SYSTEM = Actor("system")


class IdentityService:
    """Creates, lists, rotates and revokes identities and their keys."""

    def __init__(self, store: Store, registry: CredentialRegistry, hasher: keys.Hasher, security: Security) -> None:
        self._store = store
        self._registry = registry
        self._hasher = hasher
        self._security = security

    async def load(self) -> None:
        """Fill the registry with every live key in the store."""
        identities = {i.id: i for i in await self._store.list_identities()}
        pairs = [(identities[k.identity_id], k) for k in await self._store.list_keys() if k.identity_id in identities]
        self._registry.load(pairs)

    async def sync_declared(self, declared: list[DeclaredIdentity]) -> None:
        """Make the store match the identities and keys declared in the config file."""
        now = clock.now()
        wanted_keys: set[str] = set()
        for d in declared:
            ident = Identity(
                id=f"cfg-{d.name}", name=d.name, owner=d.owner, environment=d.environment,
                models=list(d.models), created_at=now, expires_at=d.expires_at, source="config",
            )
            old = await self._store.get_identity(ident.id)
            if old is not None:
                ident.created_at = old.created_at
            elif await self._store.find_identity(d.name) is not None:
                raise Conflict(f"identity {d.name!r} exists in the store and cannot also be declared in config")
            await self._store.put_identity(ident)
            for secret in d.keys:
                digest = self._hasher.digest(secret)
                key_id = f"cfg-{digest[:16]}"
                wanted_keys.add(key_id)
                prior = await self._store.get_key(key_id)
                await self._store.put_key(ApiKey(
                    id=key_id, identity_id=ident.id, hash=digest, display=keys.display(secret),
                    created_at=prior.created_at if prior else now, expires_at=None, source="config",
                    last_used_at=prior.last_used_at if prior else None,
                ))
        for k in await self._store.list_keys():
            if k.source == "config" and k.id not in wanted_keys and k.revoked_at is None:
                await self._store.revoke_key(k.id, now)
        names = {d.name for d in declared}
        for ident in await self._store.list_identities():
            if ident.source == "config" and ident.name not in names:
                ident.disabled_at = now
                await self._store.put_identity(ident)

    async def create_identity(
        self, actor: Actor, *, name: str, owner: str, environment: Environment,
        models: list[str], expires_at: float | None = None,
    ) -> Identity:
        if not _NAME.match(name):
            raise InvalidRequest("name must be 1-63 lowercase letters, digits, '.', '_' or '-'", param="name")
        if not owner.strip():
            raise InvalidRequest("owner must not be empty", param="owner")
        if await self._store.find_identity(name) is not None:
            raise Conflict(f"an identity named {name!r} already exists", param="name")
        now = clock.now()
        if expires_at is not None and expires_at <= now:
            raise InvalidRequest("expires_at must be in the future", param="expires_at")
        ident = Identity(
            id=f"id-{uuid.uuid4().hex[:16]}", name=name, owner=owner, environment=environment,
            models=models, created_at=now, created_by=actor.name, expires_at=expires_at,
        )
        await self._store.put_identity(ident)
        await self._record(actor, "identity.create", ident.id, {"name": name, "owner": owner, "environment": environment, "models": models})
        return ident

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
        now = clock.now()
        for k in await self._store.list_keys(identity_id):
            self._registry.remove(k.id)
            await self._store.revoke_key(k.id, now)
        ident.disabled_at = ident.disabled_at or now
        await self._store.put_identity(ident)
        await self._record(actor, "identity.disable", identity_id, {})
        return ident

    async def issue_key(self, actor: Actor, identity_id: str, *, ttl_days: float | None = None) -> tuple[ApiKey, str]:
        """A new key for an identity; the secret is returned here and never again."""
        ident = await self.get_identity(identity_id)
        if ident.disabled_at is not None:
            raise Conflict("the identity is disabled")
        ttl = self._ttl(ttl_days)
        secret = keys.generate(ident.environment)
        now = clock.now()
        key = ApiKey(
            id=f"key-{uuid.uuid4().hex[:16]}", identity_id=ident.id, hash=self._hasher.digest(secret),
            display=keys.display(secret), created_at=now, created_by=actor.name, expires_at=now + ttl,
        )
        await self._store.put_key(key)
        self._registry.add(ident, key)
        await self._record(actor, "key.issue", key.id, {"identity_id": ident.id, "expires_at": key.expires_at})
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
        """Revoke a key; the registry forgets it before this returns."""
        key = await self.get_key(key_id)
        self._registry.remove(key_id)
        now = clock.now()
        await self._store.revoke_key(key_id, now)
        await self._record(actor, "key.revoke", key_id, {"identity_id": key.identity_id})
        key.revoked_at = key.revoked_at or now
        return key

    async def rotate_key(self, actor: Actor, key_id: str, *, overlap_seconds: float = 0.0, ttl_days: float | None = None) -> tuple[ApiKey, str]:
        """Issue a successor key; the old one dies now, or after the overlap."""
        old = await self.get_key(key_id)
        if old.revoked_at is not None:
            raise Conflict("the key is revoked and cannot be rotated")
        if old.source == "config":
            raise Conflict("keys declared in the config file are rotated in the config file")
        new, secret = await self.issue_key(actor, old.identity_id, ttl_days=ttl_days)
        if overlap_seconds <= 0:
            await self.revoke_key(actor, key_id)
        else:
            ident = await self.get_identity(old.identity_id)
            ends = clock.now() + overlap_seconds
            old.expires_at = min(old.expires_at, ends) if old.expires_at else ends
            await self._store.put_key(old)
            self._registry.add(ident, old)
        await self._record(actor, "key.rotate", key_id, {"successor": new.id, "overlap_seconds": overlap_seconds})
        return new, secret

    def _ttl(self, ttl_days: float | None) -> float:
        days = self._security.default_key_ttl_days if ttl_days is None else ttl_days
        if days <= 0 or days > self._security.max_key_ttl_days:
            raise InvalidRequest(f"ttl_days must be in (0, {self._security.max_key_ttl_days:g}]", param="ttl_days")
        return days * _DAY

    async def _record(self, actor: Actor, action: str, target: str, detail: dict) -> None:
        await self._store.record_change(ChangeEvent(
            id=uuid.uuid4().hex, ts=clock.now(), actor=actor.name, action=action,
            target=target, source_ip=actor.source_ip, detail=detail,
        ))
