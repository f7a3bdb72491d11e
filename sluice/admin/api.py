"""Control-plane API: identities and keys, usage, the change log, metrics and health."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import msgspec

from ..core import clock
from ..core.errors import InvalidRequest, Unavailable
from ..core.exchange import Exchange, Reply
from ..core.types import ApiKey, Identity
from ..identity import Actor, IdentityService
from ..store import Store, StoreUnavailable
from .auth import AdminAuth

Handler = Callable[[Exchange], Awaitable[Reply]]


class NewIdentity(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    owner: str
    environment: Literal["dev", "prod"] = "dev"
    models: list[str] = msgspec.field(default_factory=list)
    expires_at: float | None = None


class NewKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ttl_days: Annotated[float, msgspec.Meta(gt=0)] | None = None


class Rotation(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    overlap_seconds: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 0.0
    ttl_days: Annotated[float, msgspec.Meta(gt=0)] | None = None


def _decode(body: bytes, kind: type) -> object:
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None


def _identity(i: Identity) -> dict:
    return msgspec.structs.asdict(i)


def _key(k: ApiKey, now: float) -> dict:
    d = msgspec.structs.asdict(k)
    d.pop("hash")
    d["active"] = k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
    return d


def _float(q: dict, name: str, default: float) -> float:
    try:
        return float(q.get(name, default))
    except ValueError:
        raise InvalidRequest(f"{name} must be a number", param=name) from None


class AdminApi:
    """Every control-plane endpoint; each authenticates an admin first."""

    def __init__(self, auth: AdminAuth, identities: IdentityService, store: Store, flush_usage: Callable[[], Awaitable[bool]]) -> None:
        self._auth = auth
        self._ids = identities
        self._store = store
        self._flush_usage = flush_usage

    def routes(self) -> list[tuple[str, str, Handler]]:
        g = self._guarded
        return [
            ("GET", "/admin/identities", g(self.list_identities)),
            ("POST", "/admin/identities", g(self.create_identity)),
            ("GET", "/admin/identities/{identity_id}", g(self.get_identity)),
            ("DELETE", "/admin/identities/{identity_id}", g(self.disable_identity)),
            ("GET", "/admin/identities/{identity_id}/keys", g(self.list_keys)),
            ("POST", "/admin/identities/{identity_id}/keys", g(self.issue_key)),
            ("POST", "/admin/keys/{key_id}/rotate", g(self.rotate_key)),
            ("POST", "/admin/keys/{key_id}/revoke", g(self.revoke_key)),
            ("GET", "/admin/usage", g(self.usage)),
            ("GET", "/admin/usage/summary", g(self.usage_summary)),
            ("GET", "/admin/changes", g(self.changes)),
        ]

    def _guarded(self, fn: Callable[[Actor, Exchange], Awaitable[Reply]]) -> Handler:
        async def handler(exchange: Exchange) -> Reply:
            actor = self._auth(exchange)
            try:
                return await fn(actor, exchange)
            except StoreUnavailable:
                raise Unavailable("The control plane's store is unavailable; retry later.",
                                  code="store_unavailable", retry_after=1.0) from None

        handler.__name__ = fn.__name__
        return handler

    async def list_identities(self, actor: Actor, ex: Exchange) -> Reply:
        include = ex.query.get("include_disabled") in ("1", "true")
        return Reply.json({"object": "list", "data": [_identity(i) for i in await self._ids.list_identities(include)]})

    async def create_identity(self, actor: Actor, ex: Exchange) -> Reply:
        req: NewIdentity = _decode(ex.body, NewIdentity)  # type: ignore[assignment]
        ident = await self._ids.create_identity(
            actor, name=req.name, owner=req.owner, environment=req.environment, models=req.models, expires_at=req.expires_at
        )
        return Reply.json(_identity(ident), status=201)

    async def get_identity(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json(_identity(await self._ids.get_identity(ex.params["identity_id"])))

    async def disable_identity(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json(_identity(await self._ids.disable_identity(actor, ex.params["identity_id"])))

    async def list_keys(self, actor: Actor, ex: Exchange) -> Reply:
        now = clock.now()
        keys = await self._ids.list_keys(ex.params["identity_id"])
        return Reply.json({"object": "list", "data": [_key(k, now) for k in keys]})

    async def issue_key(self, actor: Actor, ex: Exchange) -> Reply:
        req: NewKey = _decode(ex.body, NewKey)  # type: ignore[assignment]
        key, secret = await self._ids.issue_key(actor, ex.params["identity_id"], ttl_days=req.ttl_days)
        return Reply.json({**_key(key, clock.now()), "key": secret}, status=201, headers={"Cache-Control": "no-store"})

    async def rotate_key(self, actor: Actor, ex: Exchange) -> Reply:
        req: Rotation = _decode(ex.body, Rotation)  # type: ignore[assignment]
        key, secret = await self._ids.rotate_key(actor, ex.params["key_id"], overlap_seconds=req.overlap_seconds, ttl_days=req.ttl_days)
        return Reply.json({**_key(key, clock.now()), "key": secret}, status=201, headers={"Cache-Control": "no-store"})

    async def revoke_key(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json(_key(await self._ids.revoke_key(actor, ex.params["key_id"]), clock.now()))

    async def usage(self, actor: Actor, ex: Exchange) -> Reply:
        await self._flush_usage()
        since = _float(ex.query, "since", 0.0)
        limit = int(min(max(_float(ex.query, "limit", 100), 1), 10_000))
        rows = await self._store.list_usage(since=since, limit=limit)
        return Reply.json({"object": "list", "data": rows})

    async def usage_summary(self, actor: Actor, ex: Exchange) -> Reply:
        await self._flush_usage()
        rows = await self._store.summarize_usage(since=_float(ex.query, "since", 0.0))
        return Reply.json({"object": "list", "data": rows})

    async def changes(self, actor: Actor, ex: Exchange) -> Reply:
        limit = int(min(max(_float(ex.query, "limit", 100), 1), 10_000))
        return Reply.json({"object": "list", "data": await self._store.list_changes(limit=limit)})
