"""Control-plane API. Every endpoint declares the scopes it needs; the table is the contract
(and the role-by-endpoint test walks it)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

import msgspec

from ..core import clock
from ..core import scope
from ..core.errors import InvalidRequest, NotFound, Unauthenticated, Unavailable
from ..core.config import LimitRule
from ..core.exchange import Exchange, Reply
from ..core.types import ApiKey, Identity, Role
from ..identity import Actor, IdentityService, Keyring
from ..identity import inventory as inv
from ..identity import roles as r
from ..limits import Limiter
from ..store import Store, StoreUnavailable
from .audit_api import AuditAdmin
from . import chargeback
from .auth import AdminAuth
from .chargeback import UsageReportQuery
from .dashboard import Dashboard
from .routing_api import RoutingAdmin
from .policy_api import PolicyAdmin, freeze_gate
from .guard_api import GuardAdmin
from .mcp_api import McpAdmin
from .cache_api import CacheAdmin
from .bodies import decode as _decode
from .openapi import accepts, document

Handler = Callable[[Exchange], Awaitable[Reply]]
Action = Callable[[Actor, Exchange], Awaitable[Reply]]


class NewIdentity(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    owner: str
    environment: Literal["dev", "prod"] = "dev"
    models: list[str] = msgspec.field(default_factory=list)
    expires_at: float | None = None
    team: str | None = None
    roles: list[Role] | None = None


class IdentityPatch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    models: list[str] | None = None
    team: str | None | msgspec.UnsetType = msgspec.UNSET
    owner: str | None = None


class RoleSet(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    roles: list[str]


class NewKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    ttl_days: Annotated[float, msgspec.Meta(gt=0)] | None = None
    plane: Literal["data", "control"] = "data"


class Rotation(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    overlap_seconds: Annotated[float, msgspec.Meta(ge=0, le=30 * 86400)] = 0.0
    ttl_days: Annotated[float, msgspec.Meta(gt=0)] | None = None


class KeyLookup(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A key to trace: the whole key, its display form (``slk_dev_ns9M…yEmr`` or with ``...``) or its id."""

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class Offboarding(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reassign_to: str | None = None


class NewTeam(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    owner: str


class LimitRules(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    rules: list[LimitRule]


class Listing(msgspec.Struct, kw_only=True):
    """Query of identity listings."""

    include_disabled: bool = False


class InventoryQuery(Listing, kw_only=True):
    """Query of the inventory: JSON, or CSV for a spreadsheet review."""

    format: Literal["json", "csv"] = "json"


class Window(msgspec.Struct, kw_only=True):
    """Query of the usage summary: records since a Unix time."""

    since: float = 0.0


_Limit = Annotated[int, msgspec.Meta(ge=1, le=10_000)]


class UsageQuery(Window, kw_only=True):
    """Query of usage records: since a Unix time, at most ``limit`` of them."""

    limit: _Limit = 100


class Recent(msgspec.Struct, kw_only=True):
    """Query of the change log: the latest ``limit`` entries."""

    limit: _Limit = 100


def _key(k: ApiKey, now: float) -> dict:
    d = msgspec.structs.asdict(k)
    d.pop("hash")
    d["active"] = k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
    return d


def _number(q: dict, name: str, default: float) -> float:
    try:
        value = float(q.get(name, default))
    except ValueError:
        value = math.nan
    if not math.isfinite(value):  # nan and inf parse as floats but order nothing (int(nan) raises)
        raise InvalidRequest(f"{name} must be a finite number", param=name)
    return value


def _limit(q: dict) -> int:
    return int(min(max(_number(q, "limit", 100), 1), 10_000))


def _listing(data: list) -> Reply:
    return Reply.json({"object": "list", "data": data})


class AdminApi:
    """Every control-plane endpoint; each authenticates, then checks its declared scopes."""

    def __init__(self, auth: AdminAuth, identities: IdentityService, store: Store,
                 flush_usage: Callable[[], Awaitable[bool]], routing: RoutingAdmin,
                 keyring: Keyring, limiter: Limiter, policy: PolicyAdmin | None = None, audit: AuditAdmin | None = None,
                 on_auth_failure: Callable[[str | None, str, str | None], Awaitable[None]] | None = None,
                 guard: GuardAdmin | None = None, dashboard: Dashboard | None = None, mcp: McpAdmin | None = None,
                 cache: CacheAdmin | None = None) -> None:
        self._auth = auth
        self._ids = identities
        self._store = store
        self._flush_usage = flush_usage
        self._routing = routing
        self._keyring = keyring
        self._limiter = limiter
        self._policy = policy
        self._dashboard = dashboard
        self._openapi: bytes | None = None
        self._audit = audit
        self._on_auth_failure = on_auth_failure  # failed logins go to the audit log
        self._guard = guard
        self._mcp = mcp
        self._cache = cache

    def endpoints(self) -> list[tuple[str, str, tuple[str, ...], Action]]:
        """(method, path, scopes needed, action): the control plane's whole surface."""
        return [
            ("GET", "/admin/whoami", (), self.whoami),
            ("GET", "/admin/identities", (r.IDENTITIES_READ,), self.list_identities),
            ("POST", "/admin/identities", (r.IDENTITIES_WRITE,), self.create_identity),
            ("GET", "/admin/identities/inventory", (r.INVENTORY_READ,), self.inventory),
            ("GET", "/admin/identities/{identity_id}", (r.IDENTITIES_READ,), self.get_identity),
            ("PATCH", "/admin/identities/{identity_id}", (r.IDENTITIES_WRITE,), self.update_identity),
            ("DELETE", "/admin/identities/{identity_id}", (r.IDENTITIES_WRITE,), self.disable_identity),
            ("POST", "/admin/identities/{identity_id}/enable", (r.IDENTITIES_WRITE, r.KEYS_WRITE), self.enable_identity),
            ("PUT", "/admin/identities/{identity_id}/roles", (r.ROLES_GRANT,), self.set_roles),
            ("GET", "/admin/identities/{identity_id}/keys", (r.KEYS_READ,), self.list_keys),
            ("POST", "/admin/identities/{identity_id}/keys", (r.KEYS_WRITE,), self.issue_key),
            ("POST", "/admin/keys/find", (r.KEYS_READ,), self.find_key),
            ("POST", "/admin/keys/{key_id}/rotate", (r.KEYS_WRITE,), self.rotate_key),
            ("POST", "/admin/keys/{key_id}/revoke", (r.KEYS_WRITE,), self.revoke_key),
            ("POST", "/admin/owners/{owner}/offboard", (r.IDENTITIES_WRITE, r.KEYS_WRITE), self.offboard),
            ("GET", "/admin/teams", (r.IDENTITIES_READ,), self.list_teams),
            ("POST", "/admin/teams", (r.TEAMS_WRITE,), self.create_team),
            # (an instance made without __init__, as the endpoint-walking tests do, lists them too)
            *(getattr(self, "_routing", None) or RoutingAdmin.__new__(RoutingAdmin)).endpoints(),
            ("POST", "/admin/signing-keys/rotate", (r.KEYS_WRITE,), self.rotate_signing_key),
            ("GET", "/admin/limits", (r.LIMITS_READ,), self.get_limits),
            ("PUT", "/admin/limits", (r.LIMITS_WRITE,), self.put_limits),
            ("GET", "/admin/throttles", (r.LIMITS_READ,), self.list_throttles),
            ("DELETE", "/admin/throttles/{identity_id}", (r.LIMITS_WRITE,), self.release_throttle),
            ("GET", "/admin/usage", (r.USAGE_READ,), self.usage),
            ("GET", "/admin/usage/summary", (r.USAGE_READ,), self.usage_summary),
            ("GET", "/admin/changes", (r.AUDIT_READ,), self.changes),
            *(getattr(self, "_audit", None) or AuditAdmin.__new__(AuditAdmin)).endpoints(),
            ("GET", "/admin/dashboard", (r.USAGE_READ,), self.dashboard),
            ("GET", "/admin/openapi.json", (), self.openapi),
            *(getattr(self, "_policy", None) or PolicyAdmin.__new__(PolicyAdmin)).endpoints(),
            *(getattr(self, "_guard", None) or GuardAdmin(None, None)).endpoints(),  # issue 12
            *(getattr(self, "_mcp", None) or McpAdmin.__new__(McpAdmin)).endpoints(),  # issue 25
            *(getattr(self, "_cache", None) or CacheAdmin.__new__(CacheAdmin)).endpoints(),  # issue 27
        ]

    def routes(self) -> list[tuple[str, str, Handler]]:
        policy = self._policy
        if policy is None:
            return [(m, p, self._guarded(scopes, fn)) for m, p, scopes, fn in self.endpoints()]
        return [(m, p, self._guarded(scopes, freeze_gate(m, p, fn, policy.frozen))) for m, p, scopes, fn in self.endpoints()]

    def _guarded(self, scopes: tuple[str, ...], fn: Action) -> Handler:
        async def handler(exchange: Exchange) -> Reply:
            current = scope.request.set((exchange.request_id, exchange.peer))  # cited by audit entries
            try:
                try:
                    actor = self._auth(exchange)
                except Unauthenticated as exc:
                    # a browser at the dashboard's bare URL goes to the sign-in form; one that brought no key
                    # tried none, so that is no failed login
                    redirect = self._dashboard.sign_in(exchange, exc) if self._dashboard is not None else None
                    if self._on_auth_failure is not None and not (redirect and exc.code == "missing_api_key"):
                        await self._on_auth_failure(exchange.peer, exchange.path, exc.code)
                    if redirect is not None:
                        return redirect
                    raise
                for needed in scopes:
                    actor.require(needed)
                return await fn(actor, exchange)
            except StoreUnavailable:
                raise Unavailable("The control plane's store is unavailable; retry later.",
                                  code="store_unavailable", retry_after=1.0) from None
            finally:
                scope.request.reset(current)

        handler.__name__ = fn.__name__
        return handler

    async def openapi(self, actor: Actor, ex: Exchange) -> Reply:
        """This document: the control plane's contract, generated from the endpoint table."""
        if self._openapi is None:
            self._openapi = msgspec.json.encode(document(self.endpoints()))
        return Reply(200, self._openapi)

    async def whoami(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json({"name": actor.name, "identity_id": actor.identity_id,
                           "roles": sorted(actor.roles), "scopes": sorted(actor.grants)})

    # identities
    @accepts(query=Listing)
    async def list_identities(self, actor: Actor, ex: Exchange) -> Reply:
        include = ex.query.get("include_disabled") in ("1", "true")
        return _listing([msgspec.structs.asdict(i) for i in await self._ids.list_identities(include)])

    @accepts(NewIdentity)
    async def create_identity(self, actor: Actor, ex: Exchange) -> Reply:
        req: NewIdentity = _decode(ex.body, NewIdentity)  # type: ignore[assignment]
        ident = await self._ids.create_identity(
            actor, name=req.name, owner=req.owner, environment=req.environment, models=req.models,
            expires_at=req.expires_at, team=req.team, roles=req.roles,  # type: ignore[arg-type]
        )
        return Reply.json(msgspec.structs.asdict(ident), status=201)

    async def get_identity(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json(msgspec.structs.asdict(await self._ids.get_identity(ex.params["identity_id"])))

    @accepts(IdentityPatch)
    async def update_identity(self, actor: Actor, ex: Exchange) -> Reply:
        req: IdentityPatch = _decode(ex.body, IdentityPatch)  # type: ignore[assignment]
        team = None if req.team is msgspec.UNSET else req.team
        ident = await self._ids.update_identity(actor, ex.params["identity_id"], models=req.models, team=team,
                                                owner=req.owner, clear_team=req.team is None)
        return Reply.json(msgspec.structs.asdict(ident))

    async def disable_identity(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json(msgspec.structs.asdict(await self._ids.disable_identity(actor, ex.params["identity_id"])))

    async def enable_identity(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json(msgspec.structs.asdict(await self._ids.enable_identity(actor, ex.params["identity_id"])))

    @accepts(RoleSet)
    async def set_roles(self, actor: Actor, ex: Exchange) -> Reply:
        req: RoleSet = _decode(ex.body, RoleSet)  # type: ignore[assignment]
        ident: Identity = await self._ids.set_roles(actor, ex.params["identity_id"], req.roles)
        return Reply.json(msgspec.structs.asdict(ident))

    @accepts(query=InventoryQuery, content_types=("application/json", "text/csv"))
    async def inventory(self, actor: Actor, ex: Exchange) -> Reply:
        await self._flush_usage()
        rows = inv.build(await self._ids.list_identities(include_disabled=ex.query.get("include_disabled") in ("1", "true")),
                         await self._store.list_keys(), await self._store.identity_activity(), clock.now())
        if ex.query.get("format") == "csv":
            return Reply(200, _csv(rows).encode(), "text/csv; charset=utf-8")
        return _listing(rows)

    @accepts(Offboarding)
    async def offboard(self, actor: Actor, ex: Exchange) -> Reply:
        req: Offboarding = _decode(ex.body, Offboarding)  # type: ignore[assignment]
        return Reply.json(await self._ids.offboard(actor, ex.params["owner"], req.reassign_to))

    # keys
    async def list_keys(self, actor: Actor, ex: Exchange) -> Reply:
        now = clock.now()
        return _listing([_key(k, now) for k in await self._ids.list_keys(ex.params["identity_id"])])

    @accepts(NewKey)
    async def issue_key(self, actor: Actor, ex: Exchange) -> Reply:
        req: NewKey = _decode(ex.body, NewKey)  # type: ignore[assignment]
        key, secret = await self._ids.issue_key(actor, ex.params["identity_id"], ttl_days=req.ttl_days, plane=req.plane)
        return Reply.json({**_key(key, clock.now()), "key": secret}, status=201, headers={"Cache-Control": "no-store"})

    @accepts(KeyLookup)
    async def find_key(self, actor: Actor, ex: Exchange) -> Reply:
        """Which identity, key and owner a leaked key belongs to (whole, display form or id); never the secret.
        A POST, so a whole key travels in the body and not in a URL a log may keep; a read, allowed while frozen."""
        req: KeyLookup = _decode(ex.body, KeyLookup)  # type: ignore[assignment]
        now = clock.now()
        return _listing([{"key": _key(k, now), "identity": None if i is None else {
            "id": i.id, "name": i.name, "owner": i.owner, "team": i.team, "environment": i.environment,
            "disabled": i.disabled_at is not None}} for k, i in await self._ids.find_keys(req.key)])

    @accepts(Rotation)
    async def rotate_key(self, actor: Actor, ex: Exchange) -> Reply:
        req: Rotation = _decode(ex.body, Rotation)  # type: ignore[assignment]
        key, secret = await self._ids.rotate_key(actor, ex.params["key_id"], overlap_seconds=req.overlap_seconds,
                                                 ttl_days=req.ttl_days)
        return Reply.json({**_key(key, clock.now()), "key": secret}, status=201, headers={"Cache-Control": "no-store"})

    async def revoke_key(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json(_key(await self._ids.revoke_key(actor, ex.params["key_id"]), clock.now()))

    async def rotate_signing_key(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json({"kid": await self._keyring.rotate(actor)})  # the keys and their record: one transaction

    # teams
    async def list_teams(self, actor: Actor, ex: Exchange) -> Reply:
        return _listing([msgspec.structs.asdict(t) for t in await self._ids.list_teams()])

    @accepts(NewTeam)
    async def create_team(self, actor: Actor, ex: Exchange) -> Reply:
        req: NewTeam = _decode(ex.body, NewTeam)  # type: ignore[assignment]
        return Reply.json(msgspec.structs.asdict(await self._ids.create_team(actor, req.name, req.owner)), status=201)

    # limits
    async def get_limits(self, actor: Actor, ex: Exchange) -> Reply:
        return Reply.json({"rules": self._limiter.rules.rules})

    @accepts(LimitRules)
    async def put_limits(self, actor: Actor, ex: Exchange) -> Reply:
        req: LimitRules = _decode(ex.body, LimitRules)  # type: ignore[assignment]
        names = [rule.name for rule in req.rules]
        if len(set(names)) != len(names):
            raise InvalidRequest("limit rule names must be unique", param="rules")
        before = self._limiter.rules.rules
        if self._policy is not None:  # a change set of the versioned policy: stored, on every replica, kept
            pending = await self._policy.change_limits(actor, req.rules)
            if pending is not None:
                return pending
            return Reply.json({"rules": req.rules})
        self._limiter.replace_rules(req.rules)
        await self._ids.record(actor, "limits.replace", "limits", {
            "from": msgspec.to_builtins(before), "to": msgspec.to_builtins(req.rules)})
        return Reply.json({"rules": req.rules})

    async def list_throttles(self, actor: Actor, ex: Exchange) -> Reply:
        guard = self._limiter.anomaly
        return _listing(guard.throttles() if guard is not None else [])

    async def release_throttle(self, actor: Actor, ex: Exchange) -> Reply:
        guard = self._limiter.anomaly
        identity = ex.params["identity_id"]
        if guard is None or not guard.release(identity):
            raise NotFound(f"no throttle on {identity!r}")
        await self._ids.record(actor, "anomaly.release", identity, {})
        return Reply.json({"identity": identity, "released": True})

    # usage and audit
    @accepts(query=UsageQuery)
    async def usage(self, actor: Actor, ex: Exchange) -> Reply:
        await self._flush_usage()
        return _listing(await self._store.list_usage(since=_number(ex.query, "since", 0.0), limit=_limit(ex.query)))

    @accepts(query=UsageReportQuery, content_types=("application/json", "text/csv"))
    async def usage_summary(self, actor: Actor, ex: Exchange) -> Reply:
        """Usage per identity and model, or with ``by`` per identity, key, team, model, route, API or day with exact
        costs (of one key's requests with ``key``); every row names its identity, key or group for a person."""
        q = chargeback.parse(ex.query)
        await self._flush_usage()
        if q.by is not None or q.format == "csv" or q.until is not None or q.key is not None:
            return await chargeback.report(self._store, q)
        names = await chargeback.names(self._store, "identity")
        return _listing([{**msgspec.structs.asdict(row), "identity": names.get(row.identity_id, row.identity_id)}
                         for row in await self._store.summarize_usage(since=_number(ex.query, "since", 0.0))])

    @accepts(content_types=("text/html",))
    async def dashboard(self, actor: Actor, ex: Exchange) -> Reply:
        """The dashboard: traffic, latency, errors, tokens and spend, top identities, limits, upstreams, changes."""
        if self._dashboard is None:
            raise NotFound("no dashboard on this control plane")
        await self._flush_usage()
        return await self._dashboard.page(actor, ex)

    @accepts(query=Recent)
    async def changes(self, actor: Actor, ex: Exchange) -> Reply:
        return _listing(await self._store.list_changes(limit=_limit(ex.query)))


_CSV_FIELDS = ["id", "name", "owner", "team", "environment", "roles", "models", "credentials", "oldest_credential_days",
               "next_expiry", "last_used_at", "models_used", "unused_scopes", "flags"]


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text: a string that could start a formula gets a leading '
    (OWASP CSV injection); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv(rows: list[inv.InventoryRow]) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(_CSV_FIELDS)
    for row in rows:
        active = [c for c in row.credentials if c.active]
        expiries = [c.expires_at for c in active if c.expires_at is not None]
        w.writerow(map(_cell, [row.id, row.name, row.owner, row.team or "", row.environment, " ".join(row.roles),
                    " ".join(row.models), len(active), max((c.age_days for c in active), default=""),
                    min(expiries, default=""), row.last_used_at or "", " ".join(row.models_used),
                    " ".join(row.unused_scopes), " ".join(row.flags)]))
    return out.getvalue()
