"""The upstream leg of the path: send, relay the stream event by event, settle usage.

Whatever happens (a complete answer, an upstream error, a cut stream, a client that
leaves), the account stage sees the context once, with the tokens actually produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable

import msgspec
from msgspec import UNSET

from ..core import clock
from ..core.errors import GatewayError, UpstreamError, UpstreamTimeout
from ..core.exchange import Reply, StreamReply
from ..core.wire import ChatCompletionRequest, EmbeddingRequest, StreamOptions, TokenUsage
from ..upstream import SSERelay, UpstreamReply, UpstreamStream, error_event
from ..limits import INPUT, OUTPUT
from ..upstream.errors import from_status
from ..upstream.usage import completion_chars, estimate_tokens, prompt_chars, reported_usage
from .context import RequestContext

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer was complete
_encode = msgspec.json.encode
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _settle(ctx: RequestContext, usage: TokenUsage | None, completion_estimate: int) -> None:
    if usage is not None:
        ctx.prompt_tokens, ctx.completion_tokens, ctx.usage_source = usage.prompt_tokens, usage.completion_tokens, "upstream"
    else:
        ctx.prompt_tokens = estimate_tokens(prompt_chars(ctx.request))
        ctx.completion_tokens = completion_estimate
        ctx.usage_source = "estimated"


def _charge_reserved(ctx: RequestContext) -> None:
    """The request was sent and no answer came back (a timeout, a lost connection, a client that
    left): the upstream may have done the work and billed it, so it costs what it reserved.
    Failures known to come before any work (no connection, an error answer) refund instead."""
    r = ctx.reservation
    if r is not None:
        ctx.prompt_tokens, ctx.completion_tokens = int(r.amounts[INPUT]), int(r.amounts[OUTPUT])
        ctx.usage_source = "reserved"
    else:  # nothing was reserved: the prompt, at least, was read
        ctx.prompt_tokens, ctx.usage_source = estimate_tokens(prompt_chars(ctx.request)), "estimated"


# Sent, and no answer that says the upstream did no work (a 504 is a proxy's timeout); unlike
# upstream_unreachable and upstream_connect_timeout, where nothing was sent.
_UNANSWERED = frozenset({UpstreamTimeout.code, "upstream_disconnected"})


class Forward:
    """Sends the decoded request to its target and shapes the reply."""

    __slots__ = ("_path", "_account")

    def __init__(self, path: str, account: Callable[[RequestContext], None]) -> None:
        self._path = path
        self._account = account

    def _upstream_body(self, ctx: RequestContext) -> bytes:
        req = ctx.request
        changes: dict = {"model": ctx.target.upstream_model}  # type: ignore[union-attr]
        if ctx.stream:
            # Ask for usage on every stream so a stream is never recorded with zero tokens.
            opts = req.stream_options or StreamOptions()
            changes["stream_options"] = msgspec.structs.replace(opts, include_usage=True)
        return _encode(msgspec.structs.replace(req, **changes))

    async def complete(self, ctx: RequestContext) -> Reply:
        """Non-streaming: one upstream round trip, usage from the reply."""
        body = self._upstream_body(ctx)
        t0 = clock.monotonic()
        try:
            reply: UpstreamReply = await ctx.transport.send(self._path, body)  # type: ignore[union-attr]
            ctx.upstream_ms = (clock.monotonic() - t0) * 1000.0
            if reply.status != 200:
                raise from_status(reply)
        except GatewayError as exc:
            if exc.code in _UNANSWERED:
                _charge_reserved(ctx)
            raise
        except asyncio.CancelledError:  # the client left (a listener that cancels its handler)
            ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
            _charge_reserved(ctx)
            raise
        usage = reported_usage(reply.body)
        _settle(ctx, usage, 0 if usage else estimate_tokens(completion_chars(reply.body)))
        return Reply(200, reply.body)

    async def stream(self, ctx: RequestContext) -> StreamReply:
        """Streaming: open upstream, then relay; errors before the first byte are plain errors."""
        body = self._upstream_body(ctx)
        t0 = clock.monotonic()
        try:  # sent, and no headers yet: unanswered as a non-streaming request would be
            opened = await ctx.transport.open_stream(self._path, body)  # type: ignore[union-attr]
            if isinstance(opened, UpstreamReply):
                ctx.upstream_ms = (clock.monotonic() - t0) * 1000.0
                raise from_status(opened)
        except GatewayError as exc:
            if exc.code in _UNANSWERED:
                _charge_reserved(ctx)
            raise
        req: ChatCompletionRequest = ctx.request
        wants_usage = bool(req.stream_options and req.stream_options.include_usage)
        started = [False]

        def abandon() -> None:
            if not started[0]:
                opened.close()
                ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
                self._account(ctx)

        chunks = self._relay(ctx, opened, t0, started, strip_usage=not wants_usage)
        return StreamReply(chunks, headers=_SSE_HEADERS, abandon=abandon)

    async def _relay(
        self, ctx: RequestContext, upstream: UpstreamStream, t0: float, started: list[bool], *, strip_usage: bool
    ) -> AsyncGenerator[bytes, None]:
        started[0] = True
        relay = SSERelay(strip_usage=strip_usage)
        try:
            async for chunk in upstream.chunks():
                out = relay.feed(chunk)
                if out:
                    if ctx.ttft_ms is None:
                        ctx.ttft_ms = ctx.elapsed_ms()
                    yield out
            if not relay.done:
                raise UpstreamError("The upstream stream ended before it was complete.", code="upstream_stream_cut")
        except GatewayError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            yield error_event(exc)
        except BaseException:
            # GeneratorExit (the client left) or cancellation: stop the upstream too.
            ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
            raise
        finally:
            upstream.close()
            ctx.upstream_ms = (clock.monotonic() - t0) * 1000.0
            _settle(ctx, relay.usage, relay.completion_estimate)
            self._account(ctx)


def is_stream(request: ChatCompletionRequest | EmbeddingRequest) -> bool:
    return isinstance(request, ChatCompletionRequest) and request.stream is not UNSET and bool(request.stream)
