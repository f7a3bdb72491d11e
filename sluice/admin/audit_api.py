"""Control-plane audit endpoints: entries for a SIEM, inclusion and consistency proofs, signed
checkpoints (on demand), the public key, and verification. All need ``audit:read``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

import msgspec

from ..audit import AuditLog, entry
from ..core.types import MAX_INT
from ..core.errors import InvalidRequest
from ..core.exchange import Exchange, Reply
from ..identity import Actor
from ..identity import roles as r
from .openapi import accepts

Action = Callable[[Actor, Exchange], Awaitable[Reply]]
_Size = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]


class EntriesQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Entries written since a time (Unix seconds or RFC 3339), oldest first; JSON or JSON lines."""

    since: str = "0"
    limit: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000
    format: str = "json"


class InclusionQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Entry ``leaf`` in the tree of ``size`` entries (default: the whole log)."""

    leaf: _Size
    size: _Size | None = None


class ConsistencyQuery(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The tree of ``old`` entries against the one of ``new`` (default: the whole log)."""

    old: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    new: _Size | None = None


def _query(ex: Exchange, kind: type) -> object:
    try:
        return msgspec.convert(dict(ex.query), kind, strict=False)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"bad query: {exc}") from None


class AuditAdmin:
    """The audit endpoints of the control plane."""

    def __init__(self, log: AuditLog) -> None:
        self._log = log

    def endpoints(self) -> list[tuple[str, str, tuple[str, ...], Action]]:
        return [
            ("GET", "/admin/audit/entries", (r.AUDIT_READ,), self.entries),
            ("GET", "/admin/audit/proof/inclusion", (r.AUDIT_READ,), self.inclusion),
            ("GET", "/admin/audit/proof/consistency", (r.AUDIT_READ,), self.consistency),
            ("GET", "/admin/audit/checkpoints", (r.AUDIT_READ,), self.checkpoints),
            ("POST", "/admin/audit/checkpoint", (r.AUDIT_READ,), self.checkpoint),
            ("GET", "/admin/audit/public-key", (r.AUDIT_READ,), self.public_key),
            ("GET", "/admin/audit/verify", (r.AUDIT_READ,), self.verify),
        ]

    @accepts(query=EntriesQuery, content_types=("application/json", "application/x-ndjson"))
    async def entries(self, actor: Actor, ex: Exchange) -> Reply:
        """Audit entries since a time: the canonical entries, as a list or as JSON lines."""
        q: EntriesQuery = _query(ex, EntriesQuery)  # type: ignore[assignment]
        try:
            since = entry.parse_time(q.since)
        except ValueError:
            raise InvalidRequest("since must be Unix seconds or an RFC 3339 time", param="since") from None
        rows = await self._log.rows(since=since, limit=q.limit)
        if q.format == "jsonl":
            return Reply(200, b"".join(row.data + b"\n" for row in rows), "application/x-ndjson")
        if q.format != "json":
            raise InvalidRequest("format must be json or jsonl", param="format")
        return Reply.json({"object": "list", "data": [msgspec.json.decode(row.data) for row in rows]})

    @accepts(query=InclusionQuery)
    async def inclusion(self, actor: Actor, ex: Exchange) -> Reply:
        """The RFC 6962 inclusion proof of one entry."""
        q: InclusionQuery = _query(ex, InclusionQuery)  # type: ignore[assignment]
        return Reply.json(await self._log.inclusion(q.leaf, q.size))

    @accepts(query=ConsistencyQuery)
    async def consistency(self, actor: Actor, ex: Exchange) -> Reply:
        """The RFC 6962 consistency proof between two tree sizes."""
        q: ConsistencyQuery = _query(ex, ConsistencyQuery)  # type: ignore[assignment]
        return Reply.json(await self._log.consistency(q.old, q.new))

    async def checkpoints(self, actor: Actor, ex: Exchange) -> Reply:
        """Every signed checkpoint kept in the store, oldest first."""
        return Reply.json({"object": "list", "data": await self._log.notes()})

    async def checkpoint(self, actor: Actor, ex: Exchange) -> Reply:
        """Sign the current tree head now (and push it to the sinks): a C2SP signed checkpoint."""
        cp = await self._log.checkpoint()
        return Reply.json({"origin": cp.origin, "size": cp.size, "root": cp.root.hex(), "checkpoint": cp.note})

    async def public_key(self, actor: Actor, ex: Exchange) -> Reply:
        """The checkpoint verifier key (name+hash+base64), for offline verification."""
        verifier = self._log.verifier
        if verifier is None:
            raise InvalidRequest("no audit signing key is configured")
        return Reply.json({"public_key": verifier.text(), "key_hash": verifier.key_hash.hex()})

    async def verify(self, actor: Actor, ex: Exchange) -> Reply:
        """Recompute the log from the store and report the first entry altered, deleted, inserted or reordered."""
        return Reply.json((await self._log.verify()).as_dict())
