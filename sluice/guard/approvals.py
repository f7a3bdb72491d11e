"""Approvals of held tool calls: created on the data plane, decided on the control plane, redeemed once.

An approval binds to the requester, the tool, and the SHA-256 of the canonical arguments; it
expires. It keeps those canonical arguments (sealed at rest) so an approver reads exactly what
the approval binds to, whole, or not at all: arguments longer than ``SHOWN_CHARS`` cannot be
approved. An approver is never the requester's identity, nor one of the same owner (nor, with
``guardrails.approvals.separate_teams``, of the same team); a break-glass key, which has no owner,
may deny but never approve. Each decision and redemption is one ``Store.apply`` with its change
record and audit entry. Records live in the store (the ``records`` object:
``sluice.store.guard_records.GuardRecords``), so every replica agrees.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from ..core import clock
from ..core.errors import Conflict, GatewayError, InvalidRequest, NotFound, PermissionDenied, RateLimited, Unprocessable
from ..core.guardrails import ApprovalRules
from ..core.types import ChangeEvent
from .detectors import Detector
from .tools import ArgumentsError, Judgement, args_digest, canonical, masked_args, parse_arguments

log = logging.getLogger("sluice.guard")
MASK = Detector()
# The longest canonical arguments an approver is shown, and so the longest that can be approved:
# 16,384 characters is several screens of JSON, more than any tool call a person can check by eye.
SHOWN_CHARS = 16_384
# decision rows wait this long to be written together (``ToolApprovals.record``): the usage ledger's flush interval, so an
# MCP tools/call's row (one per call) costs what a chat request's usage row does; at 50 ms a gateway at a few hundred
# calls a second wrote a transaction of a handful of rows twenty times a second (bench/README.md, MCP, step 5)
RECORD_AFTER_S = 0.25
RECORD_BATCH = 500
_PUBLIC = ("id", "status", "tool", "model", "created_at", "expires_at", "decided_at", "used_at", "args_sha256",
           "args_masked", "args_chars", "request_id")


class Gone(GatewayError):
    status = 410
    type = "invalid_request_error"
    code = "approval_expired"


class Sealer(Protocol):
    """Seals what rests in the store (``sluice.identity.Sealer``)."""

    def seal(self, data: bytes) -> str: ...

    def open(self, sealed: str) -> bytes: ...


def context_digest(messages: Any) -> str:
    """A digest of what the model saw, to tie a decision to its context without keeping it."""
    return hashlib.sha256(msgspec.json.encode(messages)).hexdigest()


def public(row: dict[str, Any], now: float) -> dict[str, Any]:
    out = {k: row[k] for k in _PUBLIC}
    if out["status"] in ("pending", "approved") and row["expires_at"] <= now:
        out["status"] = "expired"
    return out


def strict(value: Any) -> Any:
    """A JSON text as strict JSON (``parse_arguments``); anything else as it is. 400 when not strict."""
    if not isinstance(value, str):
        return value
    try:
        return parse_arguments(value)
    except ArgumentsError as exc:
        raise InvalidRequest(f"arguments must be strict JSON ({exc}).", code="arguments_not_json",
                             param="arguments") from None


class ToolApprovals:
    """The approval book over the store's guardrail records."""

    def __init__(self, records: Any, sealer: Sealer, settings: Callable[[], ApprovalRules] = ApprovalRules,
                 ttl_s: float = 900.0) -> None:
        self._records = records
        self._sealer = sealer
        self._settings = settings  # the active policy's guardrails.approvals
        self.ttl_s = ttl_s
        self._pending: list[dict[str, Any]] = []  # decision rows not yet written (``record``)
        self._writer: asyncio.Future | None = None

    async def hold(self, j: Judgement, *, identity_id: str, identity_name: str, request_id: str, model: str,
                   context: str, ttl_s: float) -> str:
        """Store a pending approval for a held call; 429 when its identity has too many waiting."""
        now = clock.now()
        approval_id = "apv_" + secrets.token_urlsafe(18)
        text = j.canonical if j.canonical is not None else canonical(parse_arguments(j.call.arguments))
        cap = self._settings().max_pending_per_identity
        wait = await self._records.create_approval({
            "id": approval_id, "created_at": now, "expires_at": now + ttl_s, "status": "pending",
            "identity_id": identity_id, "identity_name": identity_name, "request_id": request_id, "model": model,
            "context_digest": context, "tool": j.call.name[:64], "call_id": j.call.id[:128],
            "args_sha256": j.args_sha256 or hashlib.sha256(text.encode()).hexdigest(), "args_masked": masked_args(text, MASK),
            "args_chars": len(text), "args_sealed": self._sealer.seal(text.encode()) if len(text) <= SHOWN_CHARS else None,
        }, cap)
        if wait is not None:
            log.warning("guard: request %s: identity %s has %d tool calls awaiting approval; one more refused",
                        request_id, identity_name, cap)
            raise RateLimited(f"{cap} tool calls of yours already await approval (guardrails.approvals."
                              "max_pending_per_identity); retry when one is decided or expires.",
                              code="too_many_pending_approvals", retry_after=max(1.0, wait))
        return approval_id

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Queue decision rows; they are written off the request path, together, within ``RECORD_AFTER_S``.
        One transaction per call cost an MCP tools/call about half of sluice's CPU (bench/README.md, "MCP
        tools/call"); a store hiccup is logged, never raised."""
        self._pending += rows
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._write_later())

    async def _write_later(self) -> None:
        try:
            await asyncio.sleep(RECORD_AFTER_S)
        finally:  # cancelled by ``close``: what is queued is written all the same
            self._writer = None
            await self._write_pending()

    async def _write_pending(self) -> None:
        while self._pending:
            rows, self._pending = self._pending[:RECORD_BATCH], self._pending[RECORD_BATCH:]
            try:
                await self._records.record_decisions(rows)
            except Exception as exc:  # the reply is already decided; the log says what was lost
                log.warning("tool decisions not recorded (%d): %s", len(rows), type(exc).__name__)

    async def close(self) -> None:
        """Write the queued decision rows now (at shutdown, before the store closes)."""
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        await self._write_pending()

    async def get(self, approval_id: str, identity_id: str | None = None) -> dict[str, Any]:
        row = await self._records.get_approval(approval_id[:64])
        if row is None or (identity_id is not None and row["identity_id"] != identity_id):
            raise NotFound("No such approval.", param="approval_id")
        return row

    def arguments(self, row: dict[str, Any]) -> str | None:
        """The canonical arguments an approval binds to, whole; None when they cannot be shown: too long,
        kept by an older sluice (which did not keep them), or sealed under another pepper."""
        sealed = row.get("args_sealed")
        if sealed is None:
            return None
        try:
            return self._sealer.open(sealed).decode()
        except Exception:  # the sealer's own errors (a changed pepper): unreadable, so never approvable
            return None

    async def decide(self, approval_id: str, approved: bool, approver: str, approver_identity: str | None) -> dict[str, Any]:
        """Approve or deny a pending approval (its row after): approving only by another owner, only what
        can be shown whole; denying, which releases nothing, by any approver."""
        row = await self.get(approval_id)
        if approved:
            await self._separate(row, approver_identity)
            if self.arguments(row) is None:
                raise _unshown(row)
        now = clock.now()
        if row["expires_at"] <= now:
            raise Gone("The approval has expired.")
        decision = "approved" if approved else "denied"
        change = _change(approver, f"tool_approval.{'approve' if approved else 'deny'}", row, "pending", decision, now)
        if not await self._records.decide(approval_id, approved, approver, now, change=change,
                                          record=self._row(row, decision, "operator decision", approver, now)):
            if (await self.get(approval_id))["status"] == "pending":
                raise Gone("The approval has expired.")
            raise Conflict("The approval was already decided.", code="approval_decided")
        return await self.get(approval_id)

    async def _separate(self, row: dict[str, Any], approver_identity: str | None) -> None:
        """Separation of duties: the approver is not the requester's identity, owner or (by policy) team."""
        if approver_identity is None:
            raise PermissionDenied("A break-glass key cannot approve a held tool call: it has no owner to keep apart "
                                   "from the requester's. Approve with an operator identity's control key "
                                   "(a break-glass key may deny).", code="break_glass_approval")
        if approver_identity == row["identity_id"]:
            raise PermissionDenied("An approval cannot be decided by the identity that asked for it.",
                                   code="self_approval")
        people = await self._records.people([row["identity_id"], approver_identity])
        requester, me = people.get(row["identity_id"]), people.get(approver_identity)
        if requester is None or me is None:
            raise PermissionDenied("The requester's identity is gone: its owner cannot be told apart from yours.",
                                   code="requester_unknown")
        if requester[0] == me[0]:
            raise PermissionDenied("An approval cannot be decided by an identity of the requester's owner.",
                                   code="same_owner_approval")
        if self._settings().separate_teams and requester[1] is not None and requester[1] == me[1]:
            raise PermissionDenied("An approval cannot be decided by an identity of the requester's team "
                                   "(guardrails.approvals.separate_teams).", code="same_team_approval")

    async def redeem(self, approval_id: str, identity_id: str, identity_name: str, arguments: Any) -> dict[str, Any]:
        """The approved call, once, for exactly the approved arguments (strict JSON: one value per key)."""
        row = await self.get(approval_id, identity_id)
        now = clock.now()
        args = strict(arguments)
        digest = args_digest(args)
        change = _change(identity_name, "tool_approval.redeem", row, "approved", "used", now)
        if not await self._records.redeem(approval_id, identity_id, digest, now, change=change,
                                          record=self._row(row, "redeemed", "approved call released", row["decided_by"], now)):
            row = await self.get(approval_id, identity_id)
            if row["status"] == "used":
                raise Conflict("The approval was already used.", code="approval_used")
            if row["status"] in ("pending", "denied"):
                raise Conflict(f"The approval is {row['status']}.", code=f"approval_{row['status']}")
            if row["expires_at"] <= now:
                raise Gone("The approval has expired.")
            raise Conflict("The arguments differ from the approved ones.", code="approval_arguments_mismatch",
                           param="arguments")
        return {"approval_id": approval_id, "status": "used",
                "tool_call": {"id": row["call_id"], "type": "function",
                              "function": {"name": row["tool"], "arguments": canonical(args)}}}

    @staticmethod
    def _row(row: dict[str, Any], decision: str, reason: str, approver: str | None, now: float) -> dict[str, Any]:
        return {"ts": now, "request_id": row["request_id"], "identity_id": row["identity_id"], "model": row["model"],
                "context_digest": row["context_digest"], "tool": row["tool"], "call_id": row["call_id"],
                "decision": decision, "reason": reason, "args_masked": row["args_masked"],
                "args_sha256": row["args_sha256"], "approval_id": row["id"], "approver": approver}


def _unshown(row: dict[str, Any]) -> Unprocessable:
    """Why a call whose arguments an approver cannot read whole cannot be approved (422)."""
    chars = row.get("args_chars")
    if chars is not None and chars > SHOWN_CHARS:
        return Unprocessable(f"The arguments of this call are {chars} characters of canonical JSON, more than the "
                             f"{SHOWN_CHARS} an approver is shown whole: it can only be denied.",
                             code="approval_arguments_too_large", param="approval_id")
    return Unprocessable("The arguments of this call cannot be shown (held by an older sluice, or sealed under "
                         "another pepper): it can only be denied.", code="approval_arguments_unreadable",
                         param="approval_id")


def _change(actor: str, action: str, row: dict[str, Any], before: str, after: str, now: float) -> ChangeEvent:
    """The change record of a decision or redemption: who, which call of whom, its arguments' hash."""
    return ChangeEvent(id=uuid.uuid4().hex, ts=now, actor=actor, action=action, target=row["id"],
                       detail={"tool": row["tool"], "identity_id": row["identity_id"], "requester": row["identity_name"],
                               "args_sha256": row["args_sha256"], "from": before, "to": after})
