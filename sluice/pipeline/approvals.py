"""Data-plane side of tool approvals: the caller reads the decision and redeems an approved call once."""

from __future__ import annotations

from typing import Any

import msgspec

from ..core import clock
from ..core.errors import InvalidRequest
from ..core.exchange import Exchange, Reply
from ..guard import ToolApprovals
from ..guard.approvals import public
from .context import RequestContext
from .endpoints import Stage


class Redeem(msgspec.Struct, forbid_unknown_fields=True):
    """The arguments the caller is about to execute: they must be exactly the approved ones."""

    arguments: Any


class ApprovalEndpoints:
    """``GET /v1/tool-approvals/{approval_id}`` and ``POST .../redeem``, for the requesting identity only."""

    def __init__(self, authenticate: Stage, approvals: ToolApprovals) -> None:
        self._authenticate = authenticate
        self._approvals = approvals

    async def _who(self, exchange: Exchange) -> str:
        ctx = RequestContext(exchange, "tool-approvals")
        await self._authenticate(ctx)
        return ctx.principal.identity_id  # type: ignore[union-attr]

    async def get(self, exchange: Exchange) -> Reply:
        who = await self._who(exchange)
        row = await self._approvals.get(exchange.params["approval_id"], who)
        return Reply.json(public(row, clock.now()))

    async def redeem(self, exchange: Exchange) -> Reply:
        who = await self._who(exchange)
        try:
            body = msgspec.json.decode(exchange.body or b"{}", type=Redeem)
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise InvalidRequest("Send {\"arguments\": <the call's arguments>}.", param="arguments") from None
        return Reply.json(await self._approvals.redeem(exchange.params["approval_id"], who, body.arguments))

    def routes(self) -> list[tuple[str, str, object]]:
        return [("GET", "/v1/tool-approvals/{approval_id}", self.get),
                ("POST", "/v1/tool-approvals/{approval_id}/redeem", self.redeem)]
