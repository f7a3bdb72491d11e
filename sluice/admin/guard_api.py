"""Control-plane guardrails: held tool calls (list, read, approve or deny) and the tool-decision record.

Holders of ``approvals:read`` (operators: the approvers) read a held call's arguments whole, in the
canonical form the approval binds to; others (auditors) the masked, bounded view only.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from ..core import clock
from ..core.errors import NotFound
from ..core.exchange import Exchange, Reply
from ..guard import ToolApprovals
from ..guard.approvals import public
from ..identity import Actor
from ..identity import roles as r
from .bodies import decode as _decode
from .openapi import accepts


class ToolDecision(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An approver's decision on a held tool call."""

    approved: bool


class ApprovalQuery(msgspec.Struct, kw_only=True):
    """Query of held tool calls: by status, the latest ``limit``."""

    status: Literal["pending", "approved", "denied", "used"] | None = None
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class DecisionQuery(msgspec.Struct, kw_only=True):
    """Query of tool decisions: the latest ``limit``."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


def _limit(ex: Exchange) -> int:
    try:
        return min(max(int(ex.query.get("limit", 100)), 1), 1000)
    except ValueError:
        return 100


class GuardAdmin:
    """The tool-approval endpoints of the control plane."""

    def __init__(self, approvals: ToolApprovals | None, records: object | None) -> None:
        self._approvals = approvals
        self._records = records

    def endpoints(self) -> list[tuple[str, str, tuple[str, ...], object]]:
        return [
            ("GET", "/admin/tool-approvals", (r.TOOLS_READ,), self.list_approvals),
            ("GET", "/admin/tool-approvals/{approval_id}", (r.TOOLS_READ,), self.get_approval),
            # approving takes reading what is approved: the arguments whole
            ("POST", "/admin/tool-approvals/{approval_id}/decision", (r.TOOLS_APPROVE, r.APPROVALS_READ), self.decide),
            ("GET", "/admin/tool-decisions", (r.TOOLS_READ,), self.list_decisions),
        ]

    @accepts(query=ApprovalQuery)
    async def list_approvals(self, actor: Actor, ex: Exchange) -> Reply:
        status = ex.query.get("status") or None
        rows = [] if self._records is None else await self._records.list_approvals(status, _limit(ex))  # type: ignore[attr-defined]
        now = clock.now()
        return Reply.json({"object": "list", "data": [self._view(actor, row, now) for row in rows]})

    def _book(self) -> ToolApprovals:
        if self._approvals is None:  # no guardrails configured: there is nothing to approve
            raise NotFound("No such approval.", param="approval_id")
        return self._approvals

    def _view(self, actor: Actor, row: dict[str, Any], now: float) -> dict[str, Any]:
        """An approval as this actor may see it: with ``arguments`` (canonical, whole, or null when too long
        to show) for ``approvals:read``."""
        out = {**public(row, now), "identity_id": row["identity_id"], "decided_by": row["decided_by"]}
        if r.APPROVALS_READ in actor.grants:
            out["arguments"] = self._book().arguments(row)
        return out

    async def get_approval(self, actor: Actor, ex: Exchange) -> Reply:
        row = await self._book().get(ex.params["approval_id"])
        return Reply.json(self._view(actor, row, clock.now()))

    @accepts(ToolDecision)
    async def decide(self, actor: Actor, ex: Exchange) -> Reply:
        req: ToolDecision = _decode(ex.body, ToolDecision)  # type: ignore[assignment]
        row = await self._book().decide(ex.params["approval_id"], req.approved, actor.name, actor.identity_id)
        return Reply.json(self._view(actor, row, clock.now()))

    @accepts(query=DecisionQuery)
    async def list_decisions(self, actor: Actor, ex: Exchange) -> Reply:
        rows = [] if self._records is None else await self._records.list_decisions(_limit(ex))  # type: ignore[attr-defined]
        return Reply.json({"object": "list", "data": rows})
