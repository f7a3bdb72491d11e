"""Policy versions, change sets, approvals, rollback and switches: every activation is one transaction.

A new version, the active pointer (compare-and-set against the version it was built on), the
change set it settles and the change-log entry that explains it are written together by
``Store.apply``; a stale base fails the whole write with 409. The replica that made the change
installs it at once; every other replica learns of it from the store watcher (the identity-state
version that the same ``apply`` bumps) and installs it within its poll interval.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from typing import Any

import msgspec

from ..core import clock
from ..core.errors import ConfigError, Conflict, InvalidRequest, NotFound, PermissionDenied
from ..core.policy_settings import PolicySettings
from ..core.types import Author, ChangeEvent, Named
from ..limits import Limiter
from ..routing import RoutingState
from ..routing.policy import EnvironmentMismatch, Environments, PolicyError, RoutingPolicy, seed, touched_routes
from ..store import Store, Writes
from .active import ActivePolicy, compile_policy, install
from .document import (PolicyDocument, PolicyInvalid, canonical, changed_sections, decode, diff, digest, switch_changes,
                       with_sections)

log = logging.getLogger("sluice.policy")
Detail = Callable[[PolicyDocument, PolicyDocument], dict]
# Why this replica refuses a document (None: it takes it), for what the document cannot judge alone: the config
# file's security settings, this machine. (the active document, the new one, whether it is a rollback)
Vet = Callable[[PolicyDocument, PolicyDocument, bool], str | None]
GUARD_SECTIONS = ("guardrails", "tools")
MCP_LATER = ("resources", "prompts", "servers")  # fields of the ``mcp`` section added after it (issue 25)
FROZEN = ("The control plane is frozen: only incident switches and rollback are accepted. "
          "Unfreeze with POST /admin/switches/unfreeze.")
# The change-set table has no kind column: a rollback that waits for approval is a change set whose
# (server-made) id names the version it restores, so approving it activates a rollback, even while frozen.
ROLLBACK_ID = "rollback-"


class PendingApproval(Exception):
    """A change that waits for a second operator: the change set it became."""

    def __init__(self, changeset: dict) -> None:
        super().__init__(changeset["id"])
        self.changeset = changeset


def event(actor: Author, action: str, target: str, detail: dict) -> ChangeEvent:
    return ChangeEvent(id=uuid.uuid4().hex, ts=clock.now(), actor=actor.name, action=action, target=target,
                       source_ip=actor.source_ip, detail=detail)


def pending_row(cid: str, actor: Author, base: int, reason: str, sections: list[str], needs_approval: bool,
                document: str) -> dict:
    """A new change set waiting for its decision (the columns of ``policy_changesets``)."""
    return {"id": cid, "base": base, "author": actor.name, "created_at": clock.now(), "reason": reason,
            "status": "pending", "sections": msgspec.json.encode(sections).decode(), "needs_approval": needs_approval,
            "document": document, "decided_by": None, "decided_at": None, "decision_reason": None, "version": None}


def global_cache(section: Any) -> list:
    """The cache rule sets that share answers across every identity (``scope: global``), as plain data."""
    return [msgspec.to_builtins(r) for r in section.rules if r.scope == "global"]


def restores(row: dict) -> int | None:
    """The version a rollback change set restores; None for any other change set."""
    cid = row["id"]
    return int(cid[len(ROLLBACK_ID):].split("-")[0]) if cid.startswith(ROLLBACK_ID) else None


def changeset_view(row: dict) -> dict:
    """A change set as the API shows it (no document: that is the diff and the export)."""
    out = {k: v for k, v in row.items() if k not in ("seq", "document")}
    if isinstance(out.get("sections"), str):
        out["sections"] = msgspec.json.decode(out["sections"])
    version = restores(row)
    out["kind"] = "change" if version is None else "rollback"
    if version is not None:
        out["restores"] = version
    return out


class PolicyService:
    """The one writer of policy versions on this replica, and the holder of its active version."""

    def __init__(self, store: Store, routing: RoutingState, limiter: Limiter, settings: PolicySettings,
                 file_document: PolicyDocument, vet: Vet | None = None) -> None:
        self._store = store
        self._routing = routing
        self._limiter = limiter
        self._settings = settings
        self._file = file_document
        self._environments = Environments(file_document.routing)  # the rule every version compiles under
        self._lock = asyncio.Lock()
        self._vet = vet
        self.active: ActivePolicy | None = None
        # called with each version this replica installs, after it is swapped in (the MCP servers reconcile here)
        self.on_install: list[Callable[[ActivePolicy], None]] = []

    # --- reading
    @property
    def current(self) -> ActivePolicy:
        assert self.active is not None, "PolicyService.bootstrap first"
        return self.active

    async def document_of(self, version: int) -> tuple[dict, PolicyDocument]:
        row = await self._store.policy_version(version)
        if row is None:
            raise NotFound(f"no policy version {version}")
        return row, decode(row["document"])

    def _compile(self, version: int, doc: PolicyDocument, data: bytes | None = None) -> ActivePolicy:
        data = data if data is not None else canonical(doc)
        try:
            return compile_policy(version, digest(data), doc, data, self._routing, self._limiter, self._environments)
        except EnvironmentMismatch as exc:
            raise Conflict(str(exc), code="environment_mismatch", param="upstream") from None
        except PolicyInvalid as exc:
            raise InvalidRequest(str(exc), param="policy") from None

    def _install(self, active: ActivePolicy) -> None:
        if self.active is not None and active.version <= self.active.version:
            return  # a newer one is already serving (the watcher and a local change crossed)
        install(active, self._routing, self._limiter)
        self.active = active
        for hook in self.on_install:
            try:
                hook(active)
            except Exception:  # a section's own activation failing must not unsettle the version installed
                log.exception("policy version %s: an activation hook failed", active.tag)

    def _vetted(self, before: PolicyDocument, after: PolicyDocument, rollback: bool = False) -> None:
        why = self._vet(before, after, rollback) if self._vet is not None else None
        if why is not None:
            raise InvalidRequest(why, param="sections")

    async def bootstrap(self) -> None:
        """At start: the config file seeds version 1 (over a routing document an older sluice stored); later
        starts keep the stored policy and add only registry versions and routes the file names anew."""
        for _ in range(5):
            version = await self._store.active_policy()
            try:
                if version == 0:
                    legacy = await self._store.load_routing()
                    routing = self._file.routing
                    if legacy is not None:
                        routing = seed(msgspec.json.decode(legacy[1], type=RoutingPolicy), routing)
                    doc = msgspec.structs.replace(self._file, routing=routing)
                    await self._commit(Named("config"), doc, 0, "seed", "seeded from the config file", "policy.seed", "1", {})
                    return
                row, doc = await self.document_of(version)
                merged = seed(doc.routing, self._file.routing)
                # a version stored before guardrails and tools were policy sections takes them from the file
                stored = msgspec.json.decode(row["document"])
                adopt = {k: getattr(self._file, k) for k in GUARD_SECTIONS if k not in stored}
                if "cache" not in stored and self._file.cache.rules:  # issue 27: a version stored before the section
                    adopt["cache"] = self._file.cache
                if "mcp" not in stored and self._file.mcp != PolicyDocument().mcp:  # issue 25: pins seeded once
                    adopt["mcp"] = self._file.mcp
                elif "mcp" in stored:  # the grants and servers, once, into a section stored before they were in it
                    grants = {k: getattr(self._file.mcp, k) for k in MCP_LATER
                              if k not in stored["mcp"] and getattr(self._file.mcp, k)}
                    if grants:
                        adopt["mcp"] = msgspec.structs.replace(doc.mcp, **grants)
                if merged != doc.routing or any(adopt.values()):
                    await self._commit(Named("config"), msgspec.structs.replace(doc, routing=merged, **adopt), version,
                                       "config", "the config file adds registry versions, routes or guardrails",
                                       "policy.seed", str(version + 1), {})
                    return
                self._install(self._compile(version, doc, row["document"].encode()))
                return
            except Conflict as exc:
                if exc.code == "environment_mismatch":
                    raise ConfigError(f"the stored policy (version {version}) cannot be served: {exc.message}; "
                                      "the config file's upstreams decide their environments") from None
                continue  # another replica seeded or changed it meanwhile: read again
            except InvalidRequest as exc:
                raise ConfigError(f"the stored policy (version {version}) cannot be served: {exc.message}") from None
        raise RuntimeError("the policy kept changing while this replica started")

    async def refresh(self) -> bool:
        """Install the active version if another replica moved it; True when it did (the store watcher calls this)."""
        version = await self._store.active_policy()
        if self.active is not None and version <= self.active.version:
            return False
        async with self._lock:
            row, doc = await self.document_of(version)
            self._install(self._compile(version, doc, row["document"].encode()))
        log.info("policy version %s active", self.current.tag)
        return True

    # --- writing
    async def _commit(self, actor: Author, doc: PolicyDocument, base: int, kind: str, reason: str,
                      action: str, target: str, detail: dict, changeset: dict | None = None,
                      data: bytes | None = None) -> ActivePolicy:
        """A new version on ``base``, activated with its one change record in one transaction, installed here."""
        version = base + 1
        active = self._compile(version, doc, data)
        row = {"id": version, "parent": base or None, "author": actor.name, "created_at": clock.now(),
               "reason": reason, "kind": kind, "hash": active.hash, "document": active.canonical.decode()}
        writes = Writes().put_policy_version(row).activate_policy(version, base)
        if changeset is not None:
            changeset["version"] = version
            writes.put_changeset(changeset)
        record = event(actor, action, target, {**detail, "policy_version": version, "policy_hash": active.hash,
                                               "parent": base or None, "kind": kind})
        async with self._lock:
            await self._store.apply(writes, record)
            self._install(active)
        log.info("policy version %s activated by %s (%s)", active.tag, actor.name, kind)
        return active

    def _prod_parts(self, before: PolicyDocument, after: PolicyDocument, sections: list[str]) -> list[str]:
        """The prod-tagged parts a change touches: whole sections, or routes named ``route:NAME`` (a route is
        touched when where its requests go can change: see ``touched_routes``)."""
        prod = set(self._settings.prod)
        hit = [s for s in sections if s in prod]
        if "cache" in sections and "cache" not in prod and global_cache(after.cache) \
                and global_cache(before.cache) != global_cache(after.cache):
            hit.append("cache:global")  # an answer shared by every identity: as a prod section, a second operator
        if "routing" in sections:
            tagged = sorted(p[len("route:"):] for p in prod if p.startswith("route:"))
            hit += [f"route:{n}" for n in touched_routes(before.routing, after.routing, tagged)]
        return hit

    async def propose(self, actor: Author, sections: dict[str, Any], *, base: int | None, reason: str,
                      action: str = "policy.propose", target: str = "policy", detail: Detail | None = None,
                      kind: str = "change") -> tuple[dict, ActivePolicy | None]:
        """A change set against ``base`` (default: the active version); applied at once when it touches
        no prod part and dev auto-applies, else pending. (change set, the version it became or None)."""
        await self.refresh()
        active = self.current
        base = active.version if base is None else base
        if base != active.version:
            raise Conflict(f"the change set is against version {base}, but version {active.version} is active; "
                           "propose it again against the active version", code="stale_policy")
        try:
            doc = with_sections(active.document, sections)
        except PolicyInvalid as exc:
            raise InvalidRequest(str(exc), param="sections") from None
        changed = changed_sections(active.document, doc)
        if not changed:
            raise InvalidRequest("the change set changes nothing in the active policy", param="sections")
        self._compile(base + 1, doc)  # validates before anything is stored
        self._vetted(active.document, doc)
        prod = self._prod_parts(active.document, doc, changed)
        row = pending_row(uuid.uuid4().hex[:16], actor, base, reason, changed, bool(prod), canonical(doc).decode())
        info = {"changeset": row["id"], "base": base, "sections": changed, "prod": prod, "reason": reason,
                **(detail(active.document, doc) if detail else {})}
        if not prod and self._settings.auto_apply_dev:
            row.update(status="applied", decided_by=actor.name, decided_at=row["created_at"], decision_reason="dev: auto-applied")
            applied = await self._commit(actor, doc, base, kind, reason, action, target, info, row)
            return row, applied
        await self._store.apply(Writes().put_changeset(row), event(actor, action, target, {**info, "pending": True}))
        return row, None

    async def _pending(self, changeset_id: str) -> dict:
        row = await self._store.changeset(changeset_id)
        if row is None:
            raise NotFound(f"no change set {changeset_id!r}")
        if row["status"] != "pending":
            raise Conflict(f"the change set is {row['status']} already", code="changeset_decided")
        return row

    async def _decidable(self, changeset_id: str) -> dict:
        """A pending change set this operator may decide now: while frozen, only a rollback's."""
        row = await self._pending(changeset_id)
        await self.refresh()
        if self.current.frozen and restores(row) is None:
            raise Conflict(FROZEN, code="control_plane_frozen")
        return row

    async def approve(self, actor: Author, changeset_id: str, reason: str) -> tuple[dict, ActivePolicy]:
        """A second operator applies a pending change set; its proposer cannot (403), a stale one is refused (409)."""
        row = await self._decidable(changeset_id)
        if "operator" not in actor.roles:
            raise PermissionDenied("approving a policy change takes the operator role", code="missing_scope")
        if row["needs_approval"] and row["author"] == actor.name:
            raise PermissionDenied("a change set touching prod policy needs an operator other than its proposer",
                                   code="self_approval")
        if row["base"] != self.current.version:
            raise Conflict(f"the change set is against version {row['base']}, but version {self.current.version} is "
                           "active; propose it again", code="stale_policy")
        row = {**row, "status": "applied", "decided_by": actor.name, "decided_at": clock.now(), "decision_reason": reason}
        doc = decode(row["document"])
        restored = restores(row)
        self._vetted(self.current.document, doc, restored is not None)
        detail = {"changeset": changeset_id, "proposer": row["author"], "reason": reason,
                  **({"to": restored} if restored is not None else {})}
        applied = await self._commit(actor, doc, row["base"], "change" if restored is None else "rollback", row["reason"],
                                     "policy.approve", changeset_id, detail, row, data=row["document"].encode())
        return row, applied

    async def reject(self, actor: Author, changeset_id: str, reason: str) -> dict:
        row = await self._decidable(changeset_id)
        row = {**row, "status": "rejected", "decided_by": actor.name, "decided_at": clock.now(), "decision_reason": reason}
        await self._store.apply(Writes().put_changeset(row), event(actor, "policy.reject", changeset_id,
                                                                   {"proposer": row["author"], "reason": reason}))
        return row

    async def rollback(self, actor: Author, version: int | None, reason: str,
                       dry_run: bool = False) -> tuple[dict, ActivePolicy | dict | None]:
        """Activate an earlier version's exact document again, as a new version (default: the active one's parent).

        One operator restores the parent when that touches no prod part and leaves the freeze as it is;
        any other rollback becomes a change set a second operator approves. (plan, the version it became,
        or the pending change set, or None on a dry run); the plan says what it restores and why it waits."""
        await self.refresh()
        active = self.current
        parent = ((await self._store.policy_version(active.version)) or {}).get("parent")
        if version is None:
            if not parent:
                raise InvalidRequest("the active version has no earlier version to roll back to", param="version")
            version = parent
        if version == active.version:
            raise InvalidRequest(f"version {version} is the active version", param="version")
        old, doc = await self.document_of(version)
        data = old["document"].encode()
        self._compile(active.version + 1, doc, data)  # an old version is held to today's rules (environments)
        self._vetted(active.document, doc, True)
        changed = changed_sections(active.document, doc)
        prod = self._prod_parts(active.document, doc, changed)
        why = [] if version == parent else [f"version {version} is not the parent of the active version {active.version}"]
        if prod:
            why.append("it touches prod parts: " + ", ".join(prod))
        if doc.switches.frozen != active.frozen:
            why.append("it would freeze the control plane" if doc.switches.frozen else "it would lift the freeze")
        plan = {"restores": version, "from": active.version, "sections": changed, "prod": prod,
                "needs_approval": bool(why), "why": why, "switches": switch_changes(active.document, doc),
                "diff": diff(active.document, doc, f"v{active.version}", f"v{version}")}
        if dry_run:
            return plan, None
        reason = reason or f"rollback to version {version}"
        detail = {"to": version, "from": active.version, "hash": old["hash"], "reason": reason}
        if not why:
            return plan, await self._commit(actor, doc, active.version, "rollback", reason, "policy.rollback",
                                            str(version), detail, data=data)
        row = pending_row(f"{ROLLBACK_ID}{version}-{uuid.uuid4().hex[:8]}", actor, active.version, reason, changed,
                          True, old["document"])
        await self._store.apply(Writes().put_changeset(row), event(actor, "policy.rollback", str(version), {
            **detail, "changeset": row["id"], "prod": prod, "why": why, "pending": True}))
        return plan, row

    async def switch(self, actor: Author, action: str, target: str, reason: str,
                     fn: Callable[[PolicyDocument], PolicyDocument]) -> ActivePolicy:
        """An incident switch: a new version at once, no approval, allowed while frozen; one recorded change."""
        for _ in range(5):
            await self.refresh()
            active = self.current
            try:
                doc = fn(active.document)
            except PolicyError as exc:
                raise NotFound(str(exc)) if str(exc).startswith("no ") else InvalidRequest(str(exc)) from None
            if canonical(doc) == active.canonical:
                raise Conflict("the switch is in that position already", code="switch_unchanged")
            try:
                return await self._commit(actor, doc, active.version, "switch", reason, action, target,
                                          {"reason": reason})
            except Conflict as exc:
                if exc.code != "stale_policy":
                    raise
        raise Conflict("the policy kept changing under this switch; retry", code="stale_policy")

    async def change_section(self, actor: Author, section: str, fn: Callable[[Any], Any], *, action: str, target: str,
                             detail: Detail, reason: str = "") -> tuple[PolicyDocument, PolicyDocument]:
        """The older endpoints (routes, weights, approvals, limits) as change sets: (before, after) when applied,
        ``PendingApproval`` when it touches a prod part."""
        for _ in range(5):
            await self.refresh()
            before = self.current.document
            new_section = fn(getattr(before, section))
            if msgspec.to_builtins(new_section) == msgspec.to_builtins(getattr(before, section)):
                await self._store.record_change(event(actor, action, target, detail(before, before)))
                return before, before  # nothing to change (approving an approved version): recorded, no new version
            try:
                row, applied = await self.propose(actor, {section: msgspec.to_builtins(new_section)},
                                                  base=self.current.version, reason=reason or action, action=action,
                                                  target=target, detail=detail)
            except Conflict as exc:
                if exc.code == "stale_policy":
                    continue
                raise
            if applied is None:
                raise PendingApproval(row)
            return before, applied.document
        raise Conflict("the policy kept changing under this change; retry", code="stale_policy")
