"""Control-plane response cache (issue 27): purge the entries of an identity, a team, a model or a route.

With the Redis store every replica shares the entries, so one purge empties them everywhere; with the
memory store it empties this process's (the control plane's worker). Every purge is in the change log.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from ..cache import CacheStore
from ..core.errors import InvalidRequest, Unavailable
from ..core.exchange import Exchange, Reply
from ..identity import Actor, IdentityService
from ..identity import roles as r
from .bodies import decode as _decode
from .openapi import accepts

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class CachePurge(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What to purge: exactly one of an identity (its id), a team, a model (as callers name it) or a route."""

    identity: _Name | None = None
    team: _Name | None = None
    model: _Name | None = None
    route: _Name | None = None


class CacheAdmin:
    """``POST /admin/cache/purge``."""

    def __init__(self, store: CacheStore, identities: IdentityService) -> None:
        self._store = store
        self._ids = identities

    def endpoints(self) -> list[tuple[str, str, tuple[str, ...], object]]:
        return [("POST", "/admin/cache/purge", (r.POLICY_PROPOSE,), self.purge)]

    @accepts(CachePurge)
    async def purge(self, actor: Actor, ex: Exchange) -> Reply:
        req: CachePurge = _decode(ex.body, CachePurge)  # type: ignore[assignment]
        given = {k: v for k, v in msgspec.structs.asdict(req).items() if v is not None}
        if len(given) != 1:
            raise InvalidRequest("name exactly one of identity, team, model or route", param="identity")
        (kind, value), = given.items()
        if kind == "identity":  # entries are tagged with the identity's id (the CLI resolves names); 404 when unknown
            value = (await self._ids.get_identity(value)).id
        try:
            gone = await self._store.purge(kind, value)
        except Exception as exc:  # the shared store is away: the operator is told, and may retry
            raise Unavailable("The cache store is unavailable; retry the purge.", code="cache_unavailable",
                              retry_after=1.0) from exc
        await self._ids.record(actor, "cache.purge", f"{kind}:{value}", {"kind": kind, "value": value, "purged": gone})
        return Reply.json({"kind": kind, "value": value, "purged": gone})
