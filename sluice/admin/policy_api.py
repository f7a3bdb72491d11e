"""Control-plane policy: versions and their YAML, change sets with diff and dry run, approval,
rollback, and the incident switches. Every write is one recorded change (``PolicyService``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec

from ..core.types import MAX_INT
from ..core.config import LimitDim, LimitRule
from ..core.errors import Conflict, InvalidRequest, NotFound
from ..core.exchange import Exchange, Reply
from ..identity import Actor, IdentityService
from ..identity import roles as r
from ..policy import (FROZEN, ActivePolicy, PendingApproval, PolicyDocument, PolicyService, changeset_view, decode, diff,
                      dry_run, switch_rule, switches_in_force, to_yaml)
from ..routing.policy import version as registry_version
from ..store import Store
from .bodies import decode as _decode
from .openapi import accepts

Action = Callable[[Actor, Exchange], Awaitable[Reply]]
_Reason = Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]


class NewChange(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A change set: whole sections (as the YAML export writes them) against a base version (default: active)."""

    sections: dict[str, Any]
    reason: _Reason
    base: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] | None = None


class Verdict(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Approve or reject: always with a reason."""

    reason: _Reason


class RollbackTo(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Re-activate an earlier version (default: the active one's parent); ``dry_run``: only say what it would do."""

    reason: _Reason
    version: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    dry_run: bool = False


class KillSwitch(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Disable a target or a route; traffic goes to ``fallback`` (``model@version``) if named, else 503."""

    reason: _Reason
    fallback: str | None = None


class Revocation(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Revoke every credential of one identity or of every identity of an owner."""

    reason: _Reason
    identity_id: str | None = None
    owner: str | None = None


class ModelLimit(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A stricter limit on one model, at once (a rule named ``switch-MODEL`` in the limits section)."""

    reason: _Reason
    per: list[LimitDim] = msgspec.field(default_factory=list)
    requests_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    input_tokens_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    output_tokens_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    concurrent_requests: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None


class ExportQuery(msgspec.Struct, kw_only=True):
    """Query of a version's export: YAML (default) or JSON."""

    format: str = "yaml"


def _summary(a: ActivePolicy) -> dict:
    return {"version": a.version, "hash": a.hash, "tag": a.tag, "frozen": a.frozen,
            "switches": msgspec.to_builtins(a.document.switches)}


# While frozen, only reads, switches and rollback reach the store. Deciding a change set is let through
# to ``PolicyService``, which takes only a rollback's while frozen (a rollback that waits for approval).
# ``/admin/keys/find`` is a read: a POST only so that a leaked key travels in a body, not a URL.
FROZEN_EXEMPT = ("/admin/switches/", "/admin/policy/rollback", "/admin/keys/find")
DECIDE = ("/admin/policy/changes/{changeset_id}/approve", "/admin/policy/changes/{changeset_id}/reject")


def freeze_gate(method: str, path: str, fn: Action, frozen: Callable[[], bool]) -> Action:
    """``fn``, refused with 409 ``control_plane_frozen`` while the control plane is frozen (writes only)."""
    if method == "GET" or path.startswith(FROZEN_EXEMPT) or path in DECIDE:
        return fn

    async def gated(actor: Actor, ex: Exchange) -> Reply:
        if frozen():
            raise Conflict(FROZEN, code="control_plane_frozen")
        return await fn(actor, ex)

    gated.__name__ = fn.__name__
    gated.__doc__ = fn.__doc__
    for attr in ("body_type", "query_type", "content_types"):
        if hasattr(fn, attr):
            setattr(gated, attr, getattr(fn, attr))
    return gated


class PolicyAdmin:
    """The policy and switch endpoints of the control plane."""

    def __init__(self, policy: PolicyService, store: Store, identities: IdentityService) -> None:
        self._policy = policy
        self._store = store
        self._ids = identities

    async def change_limits(self, actor: Actor, rules: list[LimitRule]) -> Reply | None:
        """``PUT /admin/limits`` as a change set of the limits section: None when applied, else the 202."""
        try:
            await self._policy.change_section(
                actor, "limits", lambda s: msgspec.structs.replace(s, rules=rules), action="limits.replace",
                target="limits", detail=lambda b, a: {"from": msgspec.to_builtins(b.limits.rules),
                                                      "to": msgspec.to_builtins(a.limits.rules)})
        except PendingApproval as pending:
            return Reply.json({**changeset_view(pending.changeset), "pending": True}, status=202)
        return None

    def frozen(self) -> bool:
        active = self._policy.active
        return active is not None and active.frozen

    def endpoints(self) -> list[tuple[str, str, tuple[str, ...], Action]]:
        return [
            ("GET", "/admin/policy", (r.POLICY_READ,), self.active),
            ("GET", "/admin/policy/versions", (r.POLICY_READ,), self.versions),
            ("GET", "/admin/policy/versions/{version}", (r.POLICY_READ,), self.export),
            ("GET", "/admin/policy/changes", (r.POLICY_READ,), self.list_changes),
            ("POST", "/admin/policy/changes", (r.POLICY_PROPOSE,), self.propose),
            ("GET", "/admin/policy/changes/{changeset_id}", (r.POLICY_READ,), self.show_change),
            ("POST", "/admin/policy/changes/{changeset_id}/approve", (r.POLICY_APPROVE,), self.approve),
            ("POST", "/admin/policy/changes/{changeset_id}/reject", (r.POLICY_APPROVE,), self.reject),
            ("POST", "/admin/policy/rollback", (r.POLICY_ROLLBACK,), self.rollback),
            ("GET", "/admin/switches", (r.POLICY_READ,), self.switches),
            ("POST", "/admin/switches/targets/{target}/disable", (r.SWITCHES_WRITE,), self.disable_target),
            ("POST", "/admin/switches/targets/{target}/enable", (r.SWITCHES_WRITE,), self.enable_target),
            ("POST", "/admin/switches/routes/{route}/disable", (r.SWITCHES_WRITE,), self.disable_route),
            ("POST", "/admin/switches/routes/{route}/enable", (r.SWITCHES_WRITE,), self.enable_route),
            ("PUT", "/admin/switches/models/{model}/limit", (r.SWITCHES_WRITE,), self.limit_model),
            ("DELETE", "/admin/switches/models/{model}/limit", (r.SWITCHES_WRITE,), self.unlimit_model),
            ("POST", "/admin/switches/freeze", (r.SWITCHES_WRITE,), self.freeze),
            ("POST", "/admin/switches/unfreeze", (r.SWITCHES_WRITE,), self.unfreeze),
            ("POST", "/admin/switches/revoke", (r.KEYS_WRITE,), self.revoke),
        ]

    # --- versions
    async def active(self, actor: Actor, ex: Exchange) -> Reply:
        """The active policy version, its hash and switches; ``in_force`` lists each switch with who set it and when."""
        current = self._policy.current
        return Reply.json({**_summary(current), "in_force": await self._in_force(current)})

    async def switches(self, actor: Actor, ex: Exchange) -> Reply:
        """Every incident switch in force (freeze, killed targets and routes, switch limits): who set it, when, why."""
        return Reply.json({"object": "list", "version": self._policy.current.version,
                           "data": await self._in_force(self._policy.current)})

    async def _in_force(self, active: ActivePolicy) -> list[dict]:
        return await switches_in_force(self._store, active.version, active.document)

    async def versions(self, actor: Actor, ex: Exchange) -> Reply:
        """Every policy version (newest first): parent, author, time, reason, kind, content hash."""
        active = self._policy.current.version
        rows = await self._store.list_policy_versions(limit=1000)
        return Reply.json({"object": "list", "active": active, "data": rows})

    async def _version(self, ex: Exchange) -> tuple[dict, PolicyDocument]:
        raw = ex.params["version"]
        if raw == "active":
            raw = str(self._policy.current.version)
        if not raw.isdigit() or len(raw) > 9:
            raise NotFound(f"no policy version {raw[:32]!r}")
        return await self._policy.document_of(int(raw))

    @accepts(query=ExportQuery, content_types=("application/yaml", "application/json"))
    async def export(self, actor: Actor, ex: Exchange) -> Reply:
        """One version as YAML (what ``sluice policy propose`` reads back), or JSON with its metadata."""
        row, doc = await self._version(ex)
        if ex.query.get("format") == "json":
            return Reply.json({**{k: v for k, v in row.items() if k != "document"},
                               "document": msgspec.json.decode(row["document"])})
        head = (f"# sluice policy version {row['id']} sha256:{row['hash']}\n"
                f"# parent {row['parent']} by {row['author']} ({row['kind']})\n")
        return Reply(200, (head + to_yaml(doc)).encode(), "application/yaml; charset=utf-8",
                     headers={"x-sluice-policy-hash": row["hash"]})

    # --- change sets
    @accepts(NewChange)
    async def propose(self, actor: Actor, ex: Exchange) -> Reply:
        """Propose a change set; a dev change applies at once (201 with its version), a prod one waits (202)."""
        req: NewChange = _decode(ex.body, NewChange)  # type: ignore[assignment]
        row, applied = await self._policy.propose(actor, req.sections, base=req.base, reason=req.reason)
        body = await self._describe(row)
        return Reply.json(body, status=201 if applied is not None else 202)

    async def list_changes(self, actor: Actor, ex: Exchange) -> Reply:
        """Change sets, newest first, with their status."""
        return Reply.json({"object": "list", "data": [changeset_view(c) for c in await self._store.list_changesets()]})

    async def show_change(self, actor: Actor, ex: Exchange) -> Reply:
        """One change set with its per-section diff and its dry run."""
        row = await self._store.changeset(ex.params["changeset_id"])
        if row is None:
            raise NotFound(f"no change set {ex.params['changeset_id'][:64]!r}")
        return Reply.json(await self._describe(row))

    async def _describe(self, row: dict) -> dict:
        _, base = await self._policy.document_of(row["base"])
        proposed = decode(row["document"])
        recent = await self._store.list_usage(limit=1000)
        identities = await self._store.list_identities()
        return {**changeset_view(row), "stale": row["status"] == "pending" and row["base"] != self._policy.current.version,
                "diff": diff(base, proposed, f"v{row['base']}", f"changeset-{row['id']}"),
                "dry_run": dry_run(base, proposed, recent, identities)}

    @accepts(Verdict)
    async def approve(self, actor: Actor, ex: Exchange) -> Reply:
        """Approve a pending change set (an operator other than its proposer for prod); it activates at once."""
        req: Verdict = _decode(ex.body, Verdict)  # type: ignore[assignment]
        row, applied = await self._policy.approve(actor, ex.params["changeset_id"], req.reason)
        return Reply.json({**changeset_view(row), "policy": _summary(applied)})

    @accepts(Verdict)
    async def reject(self, actor: Actor, ex: Exchange) -> Reply:
        """Reject a pending change set, with a reason."""
        req: Verdict = _decode(ex.body, Verdict)  # type: ignore[assignment]
        return Reply.json(changeset_view(await self._policy.reject(actor, ex.params["changeset_id"], req.reason)))

    @accepts(RollbackTo)
    async def rollback(self, actor: Actor, ex: Exchange) -> Reply:
        """Re-activate an earlier version's exact document as a new version (allowed while frozen).

        At once for the active version's parent when it touches no prod part nor the freeze, else a change
        set that waits for a second operator (202). Either way the answer has the diff and what it restores."""
        req: RollbackTo = _decode(ex.body, RollbackTo)  # type: ignore[assignment]
        plan, done = await self._policy.rollback(actor, req.version, req.reason, req.dry_run)
        if done is None:
            return Reply.json({**plan, "dry_run": True, "pending": False})
        if isinstance(done, ActivePolicy):
            return Reply.json({**_summary(done), **plan, "pending": False})
        return Reply.json({**changeset_view(done), **plan, "pending": True}, status=202)

    # --- switches
    def _check_target(self, doc: PolicyDocument, target: str, param: str) -> None:
        try:
            registry_version(doc.routing, target)
        except ValueError:
            raise NotFound(f"no registry version {target[:256]!r} (write model@version)", param=param) from None

    @accepts(KillSwitch)
    async def disable_target(self, actor: Actor, ex: Exchange) -> Reply:
        """Kill switch: a model version takes no traffic from the next request on (or its fallback takes it)."""
        req: KillSwitch = _decode(ex.body, KillSwitch)  # type: ignore[assignment]
        target = ex.params["target"]
        doc = self._policy.current.document
        self._check_target(doc, target, "target")
        if req.fallback is not None:
            self._check_target(doc, req.fallback, "fallback")
            if req.fallback == target:
                raise InvalidRequest("a target cannot fall back to itself", param="fallback")

        def fn(d: PolicyDocument) -> PolicyDocument:
            return _killed(d, "disabled_targets", target, req.fallback)

        return Reply.json(_summary(await self._policy.switch(actor, "switch.disable-target", target, req.reason, fn)))

    @accepts(Verdict)
    async def enable_target(self, actor: Actor, ex: Exchange) -> Reply:
        """Undo a target's kill switch."""
        req: Verdict = _decode(ex.body, Verdict)  # type: ignore[assignment]
        target = ex.params["target"]
        if target not in self._policy.current.document.switches.disabled_targets:
            raise NotFound(f"target {target[:256]!r} is not switched off")

        def fn(d: PolicyDocument) -> PolicyDocument:
            return _killed(d, "disabled_targets", target)

        return Reply.json(_summary(await self._policy.switch(actor, "switch.enable-target", target, req.reason, fn)))

    @accepts(KillSwitch)
    async def disable_route(self, actor: Actor, ex: Exchange) -> Reply:
        """Kill switch: a route serves its fallback target, or 503, from the next request on."""
        req: KillSwitch = _decode(ex.body, KillSwitch)  # type: ignore[assignment]
        route = ex.params["route"]
        doc = self._policy.current.document
        if route not in {s.name for s in doc.routing.routes}:
            raise NotFound(f"no route {route[:256]!r}")
        if req.fallback is not None:
            self._check_target(doc, req.fallback, "fallback")

        def fn(d: PolicyDocument) -> PolicyDocument:
            return _killed(d, "disabled_routes", route, req.fallback)

        return Reply.json(_summary(await self._policy.switch(actor, "switch.disable-route", route, req.reason, fn)))

    @accepts(Verdict)
    async def enable_route(self, actor: Actor, ex: Exchange) -> Reply:
        """Undo a route's kill switch."""
        req: Verdict = _decode(ex.body, Verdict)  # type: ignore[assignment]
        route = ex.params["route"]
        if route not in self._policy.current.document.switches.disabled_routes:
            raise NotFound(f"route {route[:256]!r} is not switched off")

        def fn(d: PolicyDocument) -> PolicyDocument:
            return _killed(d, "disabled_routes", route)

        return Reply.json(_summary(await self._policy.switch(actor, "switch.enable-route", route, req.reason, fn)))

    @accepts(ModelLimit)
    async def limit_model(self, actor: Actor, ex: Exchange) -> Reply:
        """Put a model behind a stricter limit from the next request on (replaces an earlier switch limit)."""
        req: ModelLimit = _decode(ex.body, ModelLimit)  # type: ignore[assignment]
        model = ex.params["model"]
        caps = {k: getattr(req, k) for k in ("requests_per_minute", "input_tokens_per_minute",
                                             "output_tokens_per_minute", "concurrent_requests")}
        if not any(caps.values()):
            raise InvalidRequest("name at least one cap, e.g. requests_per_minute", param="requests_per_minute")
        rule = LimitRule(name=switch_rule(model), per=req.per, match={"model": model}, **caps)

        def fn(d: PolicyDocument) -> PolicyDocument:
            rules = [x for x in d.limits.rules if x.name != rule.name] + [rule]
            return msgspec.structs.replace(d, limits=msgspec.structs.replace(d.limits, rules=rules))

        done = await self._policy.switch(actor, "switch.limit-model", model, req.reason, fn)
        limit = {k: v for k, v in msgspec.to_builtins(rule).items() if k not in ("name", "match") and v is not None}
        return Reply.json({**_summary(done), "model": model, "rule": rule.name, "limit": limit})

    async def unlimit_model(self, actor: Actor, ex: Exchange) -> Reply:
        """Lift a model's switch limit."""
        model = ex.params["model"]
        name = switch_rule(model)
        if name not in {x.name for x in self._policy.current.document.limits.rules}:
            raise NotFound(f"model {model[:256]!r} has no switch limit")

        def fn(d: PolicyDocument) -> PolicyDocument:
            rules = [x for x in d.limits.rules if x.name != name]
            return msgspec.structs.replace(d, limits=msgspec.structs.replace(d.limits, rules=rules))

        return Reply.json(_summary(await self._policy.switch(actor, "switch.unlimit-model", model, "lifted", fn)))

    async def _freeze(self, actor: Actor, ex: Exchange, frozen: bool) -> Reply:
        req: Verdict = _decode(ex.body, Verdict)  # type: ignore[assignment]

        def fn(d: PolicyDocument) -> PolicyDocument:
            return msgspec.structs.replace(d, switches=msgspec.structs.replace(d.switches, frozen=frozen))

        action = "switch.freeze" if frozen else "switch.unfreeze"
        return Reply.json(_summary(await self._policy.switch(actor, action, "control-plane", req.reason, fn)))

    @accepts(Verdict)
    async def freeze(self, actor: Actor, ex: Exchange) -> Reply:
        """Freeze the control plane: every write but switches and rollback is refused until unfrozen."""
        return await self._freeze(actor, ex, True)

    @accepts(Verdict)
    async def unfreeze(self, actor: Actor, ex: Exchange) -> Reply:
        """Lift the freeze."""
        return await self._freeze(actor, ex, False)

    @accepts(Revocation)
    async def revoke(self, actor: Actor, ex: Exchange) -> Reply:
        """Revoke every credential of an identity or an owner, effective on the next request."""
        req: Revocation = _decode(ex.body, Revocation)  # type: ignore[assignment]
        return Reply.json(await self._ids.revoke_all(actor, identity_id=req.identity_id, owner=req.owner,
                                                     reason=req.reason))


_LIFT = object()


def _killed(d: PolicyDocument, switch: str, name: str, fallback: object = _LIFT) -> PolicyDocument:
    """``d`` with a kill switch (``disabled_targets`` or ``disabled_routes``) set for ``name`` (with its
    fallback, or None), or lifted when no fallback argument is given."""
    kills = {k: v for k, v in getattr(d.switches, switch).items() if k != name}
    if fallback is not _LIFT:
        kills[name] = fallback
    return msgspec.structs.replace(d, switches=msgspec.structs.replace(d.switches, **{switch: kills}))
