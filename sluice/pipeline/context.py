"""The per-request context that flows through the stages; stages talk only through it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core import clock
from ..core.exchange import Exchange
from ..limits import prompt_tokens

if TYPE_CHECKING:
    from ..identity import Principal
    from ..routing import Decision, Target
    from ..routing.placement import Replica
    from ..telemetry.tracing import RequestTrace


class RequestContext:
    """What is known about one data-plane request so far."""

    __slots__ = (
        "exchange", "endpoint", "started", "principal", "request", "target", "transport",
        "status", "prompt_tokens", "completion_tokens", "cached_tokens", "usage_source", "ttft_ms",
        "upstream_ms", "error_code", "stream", "reservation", "limit_headers", "slot",
        "decision", "policy", "trace",
        "guard",  # issue 12: the output guard of this request, or None (no output rules)
        "source",  # issue 24: what another API's adapter keeps of the caller's request (None: chat's own)
        "_prompt",  # (request, target, tokens): the prompt counted once for this request and target
        "cache_creation_tokens",  # of the prompt, written to the upstream's cache (Anthropic's cache creation)
        "native",  # a Messages request's own form, for attempts on an `api: anthropic` upstream (pipeline.native)
        "cache",  # issue 27: this request's dealings with the response cache (pipeline.cached.CacheState), or None
        "flagged",  # guard-in found something (a detector fired, a tool was removed): the answer is not cached
    )

    def __init__(self, exchange: Exchange, endpoint: str) -> None:
        self.exchange = exchange
        self.endpoint = endpoint
        self.started = clock.monotonic()
        self.principal: Principal | None = None
        self.request: Any = None
        self.target: Target | None = None
        self.transport: Replica | None = None  # the replica this attempt was placed on
        self.status = 200
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cached_tokens = 0  # of the prompt, served from the upstream's cache
        self.cache_creation_tokens = 0
        self.native: Any = None
        self.cache: Any = None
        self.flagged = False
        self.usage_source = "none"
        self.ttft_ms: float | None = None
        self.upstream_ms: float | None = None
        self.error_code: str | None = None
        self.stream = False
        self.reservation: Any = None
        self.limit_headers: dict[str, str] | None = None
        self.slot: Any = None
        self.decision: Decision | None = None
        self.policy: Any = None  # the ActivePolicy this request was routed under (sluice.policy)
        self.guard: Any = None
        self.source: Any = None
        self._prompt: tuple[Any, Any, int] | None = None
        self.trace: RequestTrace | None = None  # only when this request is sampled for tracing

    def prompt_estimate(self) -> int:
        """The prompt's tokens as limits count them (the target's tokenizer, or the estimate): counted
        once per request and target, then kept (a fallback to another model counts again)."""
        req, t, kept = self.request, self.target, self._prompt
        if kept is not None and kept[0] is req and kept[1] is t:
            return kept[2]
        n = prompt_tokens(req, t.upstream_model, t.model) if t is not None else 0
        self._prompt = (req, t, n)
        return n

    def elapsed_ms(self) -> float:
        return (clock.monotonic() - self.started) * 1000.0
