"""Stage: does it fit? Reserve what the call may cost in every limit it touches, or 429."""

from __future__ import annotations

from collections.abc import Awaitable

from ...limits import INPUT, OUTPUT, Admission, Limiter, PriceTable, ask_for, bounded_output, output_tokens
from ...cache.rules import NANOS
from ...core.exchange import Exchange
from ..context import RequestContext


class Limit:
    """Reserves prompt tokens (counted), output tokens (``max_tokens`` or the cap) and money;
    what the upstream is then asked for is what was reserved. ``requests_only``: a call that spends
    no tokens (``count_tokens``) takes a request and a concurrency slot, and nothing else."""

    __slots__ = ("_limiter", "_prices", "_cap", "_clamp", "_requests_only")

    def __init__(self, limiter: Limiter, prices: PriceTable, cap: int, clamp: bool = False,
                 requests_only: bool = False) -> None:
        self._limiter = limiter
        self._prices = prices
        self._cap = cap
        self._clamp = clamp
        self._requests_only = requests_only

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        """None when done at once (no limits, or the in-process limiter); else the reservation to await."""
        active = ctx.policy  # the limits of the version the request was routed under, not a newer one
        if not (active.limits_active if active is not None else self._limiter.active):
            return None
        if self._requests_only:
            amounts: tuple[float, ...] = (1.0, 0.0, 0.0, 1.0, 0.0)
        else:
            req, target = ctx.request, ctx.target
            tokens_in = ctx.prompt_estimate()
            tokens_out = bounded_output(req, self._cap, self._clamp)
            # the chosen version's price when it has one, else the model's
            amounts = (1.0, tokens_in, tokens_out, 1.0, self._prices.cost(target.model, tokens_in, tokens_out, 0, target.price))  # type: ignore[union-attr]
        if self._limiter.inline:
            if self._reserve_now(ctx, amounts) and not self._requests_only:
                ask_for(ctx.request, self._cap)
            return None
        return self._reserve_and_ask(ctx, amounts)

    async def _reserve_and_ask(self, ctx: RequestContext, amounts: tuple[float, ...]) -> None:
        if await self._reserve(ctx, amounts) and not self._requests_only:
            ask_for(ctx.request, self._cap)

    async def count_hit(self, ctx: RequestContext, tokens_in: float, tokens_out: float) -> None:
        """A cached answer (issue 27): the request counts, its tokens only as the rule says; no upstream is asked."""
        active = ctx.policy
        if active.limits_active if active is not None else self._limiter.active:
            await self._reserve(ctx, (1.0, tokens_in, tokens_out, 1.0, 0.0))

    def _reserve_now(self, ctx: RequestContext, amounts: tuple[float, ...]) -> bool:
        """``_reserve`` on the in-process limiter, which answers without waiting."""
        rules = ctx.policy.rules if ctx.policy is not None else None
        target, p, ex = ctx.target, ctx.principal, ctx.exchange
        ctx.reservation, ctx.limit_headers = self._limiter.reserve_now(
            ex.request_id, p.identity_id, p.team, target.model, target.upstream, amounts, rules, _once(ex))  # type: ignore[union-attr]
        return ctx.reservation is not None

    async def _reserve(self, ctx: RequestContext, amounts: tuple[float, ...]) -> bool:
        """Reserve (requests, input, output, concurrency, money) in the request's limits; whether any applied."""
        limiter = self._limiter
        if limiter.inline:
            return self._reserve_now(ctx, amounts)
        rules = ctx.policy.rules if ctx.policy is not None else None
        target, p, ex = ctx.target, ctx.principal, ctx.exchange
        ctx.reservation, ctx.limit_headers = await limiter.reserve(
            ex.request_id, p.identity_id, p.team, target.model, target.upstream, amounts, rules, _once(ex))  # type: ignore[union-attr]
        return ctx.reservation is not None


def _once(ex: Exchange) -> str | None:
    """The key a batch line (``BatchLine``, in the credential's place) is charged once under, however often it runs."""
    cert = ex.peer_cert
    return None if cert is None else getattr(cert, "charge_key", None)  # no failed getattr on every request


class Admit:
    """Waits, fairly, for a slot of the model's shared capacity (models that declare one)."""

    __slots__ = ("_admission", "_cap")

    def __init__(self, admission: Admission, cap: int) -> None:
        self._admission = admission
        self._cap = cap

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        """None at once for models that share no capacity; else the wait for a slot."""
        return None if not self._admission else self._acquire(ctx)

    async def _acquire(self, ctx: RequestContext) -> None:
        r = ctx.reservation
        if r is not None:
            estimate = r.amounts[INPUT] + r.amounts[OUTPUT]
        else:
            estimate = float(ctx.prompt_estimate() + output_tokens(ctx.request, self._cap))
        # a credential may carry a priority class: a batch line's (sluice.batches.BatchOwner) yields to the others
        batch = getattr(ctx.exchange.peer_cert, "priority", None) == "batch"
        ctx.slot = await self._admission.acquire(ctx.target.model, ctx.principal.identity_id, estimate, batch)  # type: ignore[union-attr]


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
        if used and ctx.principal is not None and self._limiter.anomaly is not None:
            self._limiter.observe(ctx.principal.identity_id, used)
        r = ctx.reservation
        if r is None:
            return
        ctx.reservation = None
        hit = ctx.cache
        if hit is not None and hit.outcome == "hit":  # issue 27: the rule's charge, the answer's tokens if it counts them
            self._limiter.settle(r, *hit.counted(), hit.rule.charge_nanos / NANOS)
            return
        t = ctx.target
        spend = self._prices.cost(t.model if t else "", ctx.prompt_tokens, ctx.completion_tokens, ctx.cached_tokens,
                                  t.price if t else None, ctx.cache_creation_tokens)
        self._limiter.settle(r, ctx.prompt_tokens, ctx.completion_tokens, spend)
