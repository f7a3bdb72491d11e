"""Approvals of held tool calls: created on the data plane, decided on the control plane, redeemed once.

An approval binds to the requester, the tool, and the SHA-256 of the canonical arguments; it
expires; an approver is never the requester's own identity. Records live in the store (the
``records`` object: ``sluice.store.guard_records.GuardRecords``), so every replica agrees.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Awaitable
from typing import Any

import msgspec

from ..core import clock
from ..core.errors import Conflict, GatewayError, InvalidRequest, NotFound, PermissionDenied
from .detectors import Detector
from .tools import Judgement, args_digest, canonical, masked_args

log = logging.getLogger("sluice.guard")
MASK = Detector()
_PUBLIC = ("id", "status", "tool", "model", "created_at", "expires_at", "decided_at", "used_at", "args_sha256",
           "args_masked", "request_id")


class Gone(GatewayError):
    status = 410
    type = "invalid_request_error"
    code = "approval_expired"


def context_digest(messages: Any) -> str:
    """A digest of what the model saw, to tie a decision to its context without keeping it."""
    return hashlib.sha256(msgspec.json.encode(messages)).hexdigest()


def public(row: dict[str, Any], now: float) -> dict[str, Any]:
    out = {k: row[k] for k in _PUBLIC}
    if out["status"] in ("pending", "approved") and row["expires_at"] <= now:
        out["status"] = "expired"
    return out


class ToolApprovals:
    """The approval book over the store's guardrail records."""

    def __init__(self, records: Any, ttl_s: float = 900.0) -> None:
        self._records = records
        self.ttl_s = ttl_s
        self._side: set[asyncio.Future] = set()

    async def hold(self, j: Judgement, *, identity_id: str, identity_name: str, request_id: str, model: str,
                   context: str, ttl_s: float) -> str:
        now = clock.now()
        approval_id = "apv_" + secrets.token_urlsafe(18)
        await self._records.create_approval({
            "id": approval_id, "created_at": now, "expires_at": now + ttl_s, "status": "pending",
            "identity_id": identity_id, "identity_name": identity_name, "request_id": request_id, "model": model,
            "context_digest": context, "tool": j.call.name[:64], "call_id": j.call.id[:128],
            "args_sha256": j.args_sha256 or "", "args_masked": masked_args(j.call.arguments, MASK)})
        return approval_id

    def record(self, rows: list[dict[str, Any]]) -> None:
        """Write decisions off the request path; a store hiccup is logged, never raised."""
        async def write() -> None:
            try:
                await self._records.record_decisions(rows)
            except Exception as exc:  # the reply is already decided; the log says what was lost
                log.warning("tool decisions not recorded (%d): %s", len(rows), type(exc).__name__)
        self._spawn(write())

    def _spawn(self, job: Awaitable[None]) -> None:
        task = asyncio.ensure_future(job)
        self._side.add(task)
        task.add_done_callback(self._side.discard)

    async def get(self, approval_id: str, identity_id: str | None = None) -> dict[str, Any]:
        row = await self._records.get_approval(approval_id[:64])
        if row is None or (identity_id is not None and row["identity_id"] != identity_id):
            raise NotFound("No such approval.", param="approval_id")
        return row

    async def decide(self, approval_id: str, approved: bool, approver: str, approver_identity: str | None) -> dict[str, Any]:
        row = await self.get(approval_id)
        if approver_identity is not None and approver_identity == row["identity_id"]:
            raise PermissionDenied("An approval cannot be decided by the identity that asked for it.",
                                   code="self_approval")
        now = clock.now()
        if row["expires_at"] <= now:
            raise Gone("The approval has expired.")
        if not await self._records.decide(approval_id, approved, approver, now):
            raise Conflict("The approval was already decided.", code="approval_decided")
        self.record([self._row(row, "approved" if approved else "denied", "operator decision", approver, now)])
        return public(await self.get(approval_id), clock.now())

    async def redeem(self, approval_id: str, identity_id: str, arguments: Any) -> dict[str, Any]:
        """The approved call, once, for exactly the approved arguments."""
        row = await self.get(approval_id, identity_id)
        now = clock.now()
        if isinstance(arguments, str):
            try:
                arguments = msgspec.json.decode(arguments)
            except msgspec.DecodeError:
                raise InvalidRequest("arguments must be JSON.", param="arguments") from None
        digest = args_digest(arguments)
        if not await self._records.redeem(approval_id, identity_id, digest, now):
            row = await self.get(approval_id, identity_id)
            if row["status"] == "used":
                raise Conflict("The approval was already used.", code="approval_used")
            if row["status"] in ("pending", "denied"):
                raise Conflict(f"The approval is {row['status']}.", code=f"approval_{row['status']}")
            if row["expires_at"] <= now:
                raise Gone("The approval has expired.")
            raise Conflict("The arguments differ from the approved ones.", code="approval_arguments_mismatch",
                           param="arguments")
        self.record([self._row(row, "redeemed", "approved call released", row["decided_by"], now)])
        return {"approval_id": approval_id, "status": "used",
                "tool_call": {"id": row["call_id"], "type": "function",
                              "function": {"name": row["tool"], "arguments": canonical(arguments)}}}

    @staticmethod
    def _row(row: dict[str, Any], decision: str, reason: str, approver: str | None, now: float) -> dict[str, Any]:
        return {"ts": now, "request_id": row["request_id"], "identity_id": row["identity_id"], "model": row["model"],
                "context_digest": row["context_digest"], "tool": row["tool"], "call_id": row["call_id"],
                "decision": decision, "reason": reason, "args_masked": row["args_masked"],
                "args_sha256": row["args_sha256"], "approval_id": row["id"], "approver": approver}
