"""Data-plane endpoints: each runs the ordered stages, then the upstream leg, then accounting."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from ..core.errors import GatewayError
from ..core.exchange import Exchange, Reply, StreamReply
from ..routing import RoutingState
from ..telemetry.tracing import Tracer
from ..wire import anthropic
from .cached import Keeper, Served
from .context import RequestContext
from .forward import ROUTE_HEADER, Forward, is_stream

# A stage returns None when it is done without waiting (deciding, decoding, an inline limit, a feature that is off),
# else an awaitable to await: a coroutine per stage cost ~1,900 instructions of CPython's await machinery per
# request and stage whether it waited or not (callgrind), so the stages that can answer at once do.
Stage = Callable[[RequestContext], Awaitable[None] | None]
# another API's wire: the chat answer re-encoded in its shape (async where it must store first)
Encoder = Callable[[RequestContext, Reply | StreamReply], Reply | StreamReply | Awaitable[Reply | StreamReply]]
POLICY_HEADER = "x-sluice-policy"  # the policy version (and short hash) the request was served under


class ModelCall:
    """An endpoint that calls a model: chat completions (streaming or not) and embeddings."""

    __slots__ = ("_name", "_stages", "_forward", "_account", "_authenticate", "_tracer", "_loop", "_encode", "_keeper")

    def __init__(self, name: str, stages: Sequence[Stage], forward: Forward, account: Callable[[RequestContext], None],
                 *, authenticate: Stage, tracer: Tracer | None = None,
                 encode: Encoder | None = None, keeper: Keeper | None = None) -> None:
        self._name = name
        self._keeper = keeper  # what a cache miss answered is kept by it (issue 27); a hit is ``Served`` by a stage
        self._encode = encode  # another API's wire: the chat answer re-encoded in its shape (None: chat's own)
        self._stages = tuple(stages)
        assert self._stages[0] is authenticate  # the tracer decides once this first stage has run
        self._forward = forward
        self._account = account
        self._authenticate = authenticate
        self._tracer = tracer  # None: tracing is off
        # the serving loop, taken at the first request: asyncio.get_running_loop() on CPython 3.11
        # makes a getpid system call each time (its fork check), once per request on this path
        self._loop: asyncio.AbstractEventLoop | None = None

    async def check_headers(self, exchange: Exchange) -> None:
        """Authenticate from the headers alone; the listener asks this before it reads a large body."""
        self._authenticate(RequestContext(exchange, self._name))

    async def __call__(self, exchange: Exchange) -> Reply | StreamReply:
        ctx = RequestContext(exchange, self._name)
        streaming = False
        tracer = self._tracer
        try:
            try:
                if tracer is None or (sampling := tracer.sampling(exchange.headers)) is None:
                    for stage in self._stages:
                        if (waiting := stage(ctx)) is not None:
                            await waiting
                else:  # may be traced: decided after the first stage, authenticate (a caller's flag needs an identity)
                    await tracer.run(self._name, sampling, self._stages, ctx)
            except Served as hit:  # a cached answer: no upstream leg, accounted at once (a followed stream: at its end)
                reply: Reply | StreamReply = hit.reply
                streaming = hit.accounted
            else:
                if is_stream(ctx.request):
                    ctx.stream = streaming = True
                    reply = await self._forward.stream(ctx)
                else:
                    reply = await self._forward.complete(ctx)
                if ctx.cache is not None:
                    reply = self._keeper.keep(ctx, reply)  # type: ignore[union-attr]
            limit_headers = ctx.limit_headers
            if limit_headers:  # a fresh dict of this request's: extended, not copied
                if reply.headers:
                    limit_headers.update(reply.headers)
                reply.headers = limit_headers
            if ctx.policy is not None:
                if reply.headers is None:
                    reply.headers = {POLICY_HEADER: ctx.policy.tag}
                else:
                    reply.headers[POLICY_HEADER] = ctx.policy.tag
            if self._encode is None:
                return reply
            out = self._encode(ctx, reply)
            return out if type(out) is Reply or type(out) is StreamReply else await out  # an async encoder's answer
        except GatewayError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            streaming = False
            if ctx.cache is not None:  # requests waiting on this one's answer ask for their own
                self._keeper.land(ctx.cache, None)  # type: ignore[union-attr]
            if ctx.limit_headers:
                exc.headers = {**ctx.limit_headers, **(exc.headers or {})}
            if ctx.decision is not None:
                exc.headers = {**(exc.headers or {}), ROUTE_HEADER: ctx.decision.header(ctx.target)}
            if ctx.policy is not None:
                exc.headers = {**(exc.headers or {}), POLICY_HEADER: ctx.policy.tag}
            raise
        except BaseException:
            if ctx.error_code != "client_closed":  # the upstream leg has said why
                ctx.status, ctx.error_code = 500, "internal_error"
            streaming = False
            if ctx.cache is not None:
                self._keeper.land(ctx.cache, None)  # type: ignore[union-attr]
            raise
        finally:
            # A stream is accounted when it ends; everything else right after its answer is
            # written (the next turn of the loop, before it reads anything new): settling limits
            # and the usage record then add nothing to the caller's latency.
            if not streaming:
                loop = self._loop
                if loop is None:
                    loop = self._loop = asyncio.get_running_loop()
                loop.call_soon(self._account, ctx)


class ListModels:
    """``GET /v1/models``: only the models the caller may use; in Anthropic's list shape to a caller that
    sends ``anthropic-version`` (its SDKs do), in OpenAI's to any other."""

    __slots__ = ("_authenticate", "_routes", "_created")

    def __init__(self, authenticate: Stage, routes: RoutingState) -> None:
        self._authenticate = authenticate
        self._routes = routes
        self._created = int(time.time())

    async def __call__(self, exchange: Exchange) -> Reply:
        ctx = RequestContext(exchange, "models")
        try:
            self._authenticate(ctx)
        except GatewayError as exc:
            if exchange.headers.get("anthropic-version") is None:
                raise
            return anthropic.error_reply(exc)
        p = ctx.principal
        assert p is not None  # authenticate set it or raised
        table = self._routes.table
        names = [name for name in table.names() if p.scopes.allows(name) and table.serves(name, p.environment)]
        served = exchange.listener
        if served is not None:  # a named listener lists only the models it answers
            names = [name for name in names if served.serves_model(name)]
        if exchange.headers.get("anthropic-version") is not None:
            created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._created))
            data = [{"type": "model", "id": n, "display_name": n, "created_at": created} for n in names]
            return Reply.json({"data": data, "has_more": False, "first_id": names[0] if names else None,
                               "last_id": names[-1] if names else None})
        return Reply.json({"object": "list", "data": [
            {"id": n, "object": "model", "created": self._created, "owned_by": "sluice"} for n in names]})
