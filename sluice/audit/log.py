"""The read side of the audit log and its checkpoints: entries for export, proofs, signed tree
heads pushed to sinks the gateway cannot rewrite, and verification against the database."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from ..core import clock
from ..core.audit_settings import Audit
from ..core.errors import InvalidRequest
from ..store import StoreUnavailable
from ..store import schema as t
from . import merkle
from .note import Checkpoint, Signer, Verifier, sign_checkpoint
from .verify import Report, Row, verify

log = logging.getLogger("sluice.audit")
P = ParamSpec("P")
R = TypeVar("R")


def load_signer(settings: Audit, *, create: bool = True) -> Signer:
    """The checkpoint signing key: inline text, or the key file (created on first start when ``create``)."""
    if settings.signing_key:
        return Signer.parse(settings.signing_key)
    path = Path(settings.signing_key_file)
    if path.exists():
        return Signer.parse(path.read_text())
    if not create:
        raise FileNotFoundError(f"no audit signing key at {path}")
    signer = Signer.generate(settings.origin)
    write_key(path, signer)
    log.warning("created a new audit signing key in %s; keep its public key (sluice audit public-key) apart from it",
                path)
    return signer


def write_key(path: Path, signer: Signer) -> None:
    """Write a private key file readable by its owner only; never overwrite one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(signer.text() + "\n")


def _db(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def call(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await asyncio.wait_for(fn(*args, **kwargs), 30.0)
        except (SQLAlchemyError, OSError, asyncio.TimeoutError, ConnectionError) as exc:
            raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None

    return call


class AuditLog:
    """Entries, proofs, checkpoints and verification over the store's audit tables."""

    def __init__(self, store: Any, settings: Audit, signer: Signer | None) -> None:
        self._store = store  # a SqlStore: its engine reads the audit tables
        self.settings = settings
        self.signer = signer
        self._pending: Checkpoint | None = None  # signed but not yet accepted by the webhook

    @property
    def verifier(self) -> Verifier | None:
        return self.signer.verifier() if self.signer is not None else None

    @_db
    async def rows(self, *, since: float | None = None, limit: int | None = None) -> list[Row]:
        q = select(t.audit_log.c.seq, t.audit_log.c.entry, t.audit_log.c.root).order_by(t.audit_log.c.seq)
        if since is not None:
            q = q.where(t.audit_log.c.ts >= since)
        if limit is not None:
            q = q.limit(limit)
        async with self._store.engine.connect() as conn:
            return [Row(int(r.seq), r.entry.encode(), r.root) for r in await conn.execute(q)]

    async def leaves(self, size: int | None = None) -> list[bytes]:
        rows = await self.rows()
        leaves = [merkle.leaf_hash(r.data) for r in rows]
        if size is not None:
            if not 0 <= size <= len(leaves):
                raise InvalidRequest(f"the log holds {len(leaves)} entries", param="size")
            leaves = leaves[:size]
        return leaves

    async def inclusion(self, leaf: int, size: int | None = None) -> dict:
        """The inclusion proof of entry ``leaf`` in the tree of ``size`` entries (default: all)."""
        leaves = await self.leaves(size)
        if not 0 <= leaf < len(leaves):
            raise InvalidRequest(f"leaf must be in [0, {len(leaves)})", param="leaf")
        return {"leaf_index": leaf, "tree_size": len(leaves), "leaf_hash": leaves[leaf].hex(),
                "root": merkle.root(leaves).hex(),
                "proof": [h.hex() for h in merkle.inclusion_proof(leaf, leaves)]}

    async def consistency(self, old: int, new: int | None = None) -> dict:
        """The consistency proof between the trees of ``old`` and ``new`` entries."""
        leaves = await self.leaves(new)
        if not 0 < old <= len(leaves):
            raise InvalidRequest(f"old must be in [1, {len(leaves)}]", param="old")
        return {"old_size": old, "new_size": len(leaves), "old_root": merkle.root(leaves[:old]).hex(),
                "new_root": merkle.root(leaves).hex(),
                "proof": [h.hex() for h in merkle.consistency_proof(old, leaves)]}

    @_db
    async def head(self) -> tuple[int, bytes]:
        async with self._store.engine.connect() as conn:
            row = (await conn.execute(select(t.audit_head.c.size, t.audit_head.c.frontier)
                                      .where(t.audit_head.c.id == 1))).one()
        return int(row.size), merkle.frontier_root([bytes.fromhex(h) for h in json.loads(row.frontier)])

    @_db
    async def notes(self) -> list[str]:
        """Every stored checkpoint, oldest first."""
        async with self._store.engine.connect() as conn:
            return [r.note for r in await conn.execute(select(t.audit_checkpoints.c.note).order_by(t.audit_checkpoints.c.id))]

    async def latest(self) -> str | None:
        got = await self.notes()
        return got[-1] if got else None

    async def checkpoint(self) -> Checkpoint:
        """Sign the current tree head, keep it, and push it to the sinks (once per size and key)."""
        if self.signer is None:
            raise InvalidRequest("no audit signing key is configured")
        size, root = await self.head()
        cp = sign_checkpoint(self.signer, self.settings.origin, size, root)
        if await self._keep(cp):
            self._write_file(cp)
            self._pending = cp
        if self._pending is not None and await self._post(self._pending):
            self._pending = None
        return cp

    @_db
    async def _keep(self, cp: Checkpoint) -> bool:
        """Store the checkpoint; False when this size was already signed with this key (by any replica)."""
        assert self.signer is not None
        try:
            async with self._store.engine.begin() as conn:
                await conn.execute(t.audit_checkpoints.insert().values(
                    size=cp.size, key_hash=self.signer.verifier().key_hash.hex(), note=cp.note, created_at=clock.now()))
        except IntegrityError:
            return False
        return True

    def _write_file(self, cp: Checkpoint) -> None:
        path = self.settings.checkpoint_file
        if not path:
            return
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, cp.note.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    async def _post(self, cp: Checkpoint) -> bool:
        url = self.settings.checkpoint_webhook
        if not url:
            return True
        import httpx

        # httpx logs every request's URL at info; the webhook's address is internal and stays out of logs
        logging.getLogger("httpx").setLevel(max(logging.getLogger("httpx").getEffectiveLevel(), logging.WARNING))
        try:
            async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s) as client:
                got = await client.post(url, content=cp.note.encode(), headers={"Content-Type": "text/plain; charset=utf-8"})
            if got.status_code < 300:
                return True
            log.warning("audit checkpoint webhook answered %d; retrying at the next checkpoint", got.status_code)
        except httpx.HTTPError as exc:
            log.warning("audit checkpoint webhook failed (%s); retrying at the next checkpoint", type(exc).__name__)
        return False

    async def run(self, interval: float) -> None:
        """Sign a checkpoint every ``interval`` seconds when the log grew (a background task)."""
        last = -1
        while True:
            await asyncio.sleep(interval)
            try:
                size, _ = await self.head()
                if size != last or self._pending is not None:
                    await self.checkpoint()
                    last = size
            except Exception as exc:  # a store hiccup: try again at the next tick
                log.warning("audit checkpoint failed: %s", type(exc).__name__)

    @_db
    async def _changes(self) -> dict[str, tuple[str, str, str]]:
        q = select(t.changes.c.id, t.changes.c.actor, t.changes.c.action, t.changes.c.target)
        async with self._store.engine.connect() as conn:
            return {r.id: (r.actor, r.action, r.target) for r in await conn.execute(q)}

    async def verify(self, notes: list[str] | None = None, verifier: Verifier | None = None) -> Report:
        """Recompute everything from the database: entries, recorded heads, the change log, the append
        head, and the stored checkpoints plus any given ones."""
        rows = await self.rows()
        size, _ = await self.head()
        every = await self.notes() + list(notes or [])
        return verify(rows, verifier=verifier or self.verifier, notes=every, origin=self.settings.origin,
                      changes=await self._changes(), head_size=size)
