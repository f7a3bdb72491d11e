"""Data-plane side of tool approvals: the caller reads the decision and redeems an approved call once."""

from __future__ import annotations

from typing import Any

from ..core import clock, scope
from ..core.errors import InvalidRequest
from ..core.exchange import Exchange, Reply
from ..guard import ToolApprovals
from ..guard.approvals import public, strict
from ..identity import Principal
from .context import RequestContext
from .endpoints import Stage

_SHAPE = 'Send {"arguments": <the call\'s arguments>}.'


def _redeem_body(body: bytes) -> Any:
    """The arguments of ``{"arguments": ...}``, the whole body read as strict JSON (one value per key,
    no NaN or Infinity): a parser that keeps the last duplicate would redeem what the caller's tool
    may read otherwise."""
    try:
        text = (body or b"{}").decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The body must be UTF-8 JSON. " + _SHAPE, param="arguments") from None
    got = strict(text)
    if not isinstance(got, dict) or set(got) != {"arguments"}:
        raise InvalidRequest(_SHAPE, param="arguments")
    return got["arguments"]


class ApprovalEndpoints:
    """``GET /v1/tool-approvals/{approval_id}`` and ``POST .../redeem``, for the requesting identity only."""

    def __init__(self, authenticate: Stage, approvals: ToolApprovals) -> None:
        self._authenticate = authenticate
        self._approvals = approvals

    async def _who(self, exchange: Exchange) -> Principal:
        ctx = RequestContext(exchange, "tool-approvals")
        self._authenticate(ctx)
        return ctx.principal  # type: ignore[return-value]

    async def get(self, exchange: Exchange) -> Reply:
        who = await self._who(exchange)
        row = await self._approvals.get(exchange.params["approval_id"], who.identity_id)
        return Reply.json(public(row, clock.now()))

    async def redeem(self, exchange: Exchange) -> Reply:
        who = await self._who(exchange)
        arguments = _redeem_body(exchange.body)
        current = scope.request.set((exchange.request_id, exchange.peer))  # cited by the redemption's audit entry
        try:
            return Reply.json(await self._approvals.redeem(exchange.params["approval_id"], who.identity_id,
                                                           who.identity_name, arguments))
        finally:
            scope.request.reset(current)

    def routes(self) -> list[tuple[str, str, object]]:
        return [("GET", "/v1/tool-approvals/{approval_id}", self.get),
                ("POST", "/v1/tool-approvals/{approval_id}/redeem", self.redeem)]
