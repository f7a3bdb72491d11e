"""Stage: what did it cost? One usage record per request, appended to the ledger queue."""

from __future__ import annotations

from ...core import clock
from ...core.types import API_OF, UsageRecord
from ...limits import PriceTable
from ...telemetry import UsageLedger
from ..context import RequestContext


class Account:
    """Turns a finished context into a usage record; never blocks, never fails the request."""

    __slots__ = ("_ledger", "_prices")

    def __init__(self, ledger: UsageLedger, prices: PriceTable | None = None) -> None:
        self._ledger = ledger
        self._prices = prices

    def __call__(self, ctx: RequestContext) -> None:
        p = ctx.principal
        t = ctx.target
        d = ctx.decision
        rec = UsageRecord(
            request_id=ctx.exchange.request_id,
            ts=clock.now(),
            identity_id=p.identity_id if p else None,
            key_id=p.key_id if p else None,
            endpoint=ctx.endpoint,
            model=t.model if t else None,
            upstream=t.upstream if t else None,
            status=ctx.status,
            prompt_tokens=ctx.prompt_tokens,
            completion_tokens=ctx.completion_tokens,
            latency_ms=ctx.elapsed_ms(),
            ttft_ms=ctx.ttft_ms,
            upstream_ms=ctx.upstream_ms,
            stream=ctx.stream,
            usage_source=ctx.usage_source,  # type: ignore[arg-type]
            error_code=ctx.error_code,
            team=p.team if p else None,
            route=d.route.name if d is not None else None,
            version=t.version if t else None,
            cached_tokens=ctx.cached_tokens,
            api=API_OF.get(ctx.endpoint),
            cache_creation_tokens=ctx.cache_creation_tokens,
        )
        served = ctx.exchange.listener
        if served is not None:
            rec.listener = served.name
        cached = ctx.cache
        if cached is not None and cached.outcome == "hit":  # a cached or coalesced answer (issue 27): the rule's charge
            rec.cost_nanos = cached.rule.charge_nanos
        elif t is not None and t.price is not None and self._prices is not None:
            # a registry version's own price, as limits settled it; the ledger's fold prices the rest
            rec.cost_nanos = self._prices.nanos(t.model, ctx.prompt_tokens, ctx.completion_tokens, ctx.cached_tokens, t.price,
                                                ctx.cache_creation_tokens)
        self._ledger.record(rec)
        if ctx.trace is not None:
            ctx.trace.finish(ctx)
