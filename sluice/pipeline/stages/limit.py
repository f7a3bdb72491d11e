"""Stage: does it fit? Reserve what the call may cost in every limit it touches, or 429."""

from __future__ import annotations

from ...limits import Admission, Cost, Limiter, PriceTable, Subject, output_tokens, prompt_tokens
from ..context import RequestContext


class Limit:
    """Reserves prompt tokens (counted), output tokens (``max_tokens`` or the cap) and money."""

    __slots__ = ("_limiter", "_prices", "_cap")

    def __init__(self, limiter: Limiter, prices: PriceTable, cap: int) -> None:
        self._limiter = limiter
        self._prices = prices
        self._cap = cap

    async def __call__(self, ctx: RequestContext) -> None:
        if not self._limiter.active:
            return
        req, target, p = ctx.request, ctx.target, ctx.principal
        tokens_in = prompt_tokens(req, target.upstream_model)  # type: ignore[union-attr]
        tokens_out = output_tokens(req, self._cap)
        spend = self._prices.cost(target.model, tokens_in, tokens_out)  # type: ignore[union-attr]
        subject = Subject(p.identity_id, p.team, target.model, target.upstream)  # type: ignore[union-attr]
        ctx.reservation, ctx.limit_headers = await self._limiter.reserve(
            ctx.exchange.request_id, subject, Cost(1.0, tokens_in, tokens_out, spend))


class Admit:
    """Waits, fairly, for a slot of the model's shared capacity (models that declare one)."""

    __slots__ = ("_admission", "_cap")

    def __init__(self, admission: Admission, cap: int) -> None:
        self._admission = admission
        self._cap = cap

    async def __call__(self, ctx: RequestContext) -> None:
        if not self._admission:
            return
        r = ctx.reservation
        if r is not None:
            estimate = r.cost.input + r.cost.output
        else:
            estimate = float(prompt_tokens(ctx.request, ctx.target.upstream_model) + output_tokens(ctx.request, self._cap))  # type: ignore[union-attr]
        ctx.slot = await self._admission.acquire(ctx.target.model, ctx.principal.identity_id, estimate)  # type: ignore[union-attr]


class Settle:
    """After the call: settle the reservation to what was actually used (a cut stream: what it produced)."""

    __slots__ = ("_limiter", "_prices")

    def __init__(self, limiter: Limiter, prices: PriceTable) -> None:
        self._limiter = limiter
        self._prices = prices

    def __call__(self, ctx: RequestContext) -> None:
        used = float(ctx.prompt_tokens + ctx.completion_tokens)
        if ctx.slot is not None:
            ctx.slot.release(used)
        if ctx.principal is not None and used:
            self._limiter.observe(ctx.principal.identity_id, used)
        r = ctx.reservation
        if r is None:
            return
        ctx.reservation = None
        model = ctx.target.model if ctx.target else ""
        spend = self._prices.cost(model, ctx.prompt_tokens, ctx.completion_tokens)
        self._limiter.settle(r, Cost(1.0, float(ctx.prompt_tokens), float(ctx.completion_tokens), spend))
