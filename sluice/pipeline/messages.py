"""The Anthropic Messages API on the chat pipeline: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

A Messages request is decoded into the chat request (``stages.decode_messages``), runs the same
stages as a chat completion (authenticate, authorize, route, guard-in, limit, admit, forward,
guard-out, settle, account), and its answer is re-encoded by ``sluice.wire.anthropic``: a whole
reply as a Messages reply, a stream event by event in Anthropic's grammar (``ping`` while the first
token is pending), and every error, before the answer or inside a stream, in Anthropic's shape. An
attempt on an ``api: anthropic`` upstream sends the request as it came and reads its answer into the
chat form (``native``); what that form cannot hold (thinking blocks, the stop reason) is put back here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from ..core.errors import GatewayError
from ..core.exchange import JSON_TYPE, Exchange, Reply, StreamReply
from ..wire import anthropic
from .context import RequestContext
from .endpoints import ModelCall, Stage
from .reencode import reencoded
from .native import NativeMessages, count_natively


def _rendered(exc: GatewayError) -> GatewayError:
    """``exc`` rendered for an Anthropic caller, for the listener that answers it (a refusal from the headers,
    or one the listener made while reading the request: a body too large)."""
    exc.rendered, exc.status = anthropic.error_bytes(exc), anthropic.error_status(exc)
    return exc


def encode(ctx: RequestContext, reply: Reply | StreamReply) -> Reply | StreamReply:
    """The chat answer of a Messages request in Anthropic's shape."""
    native: NativeMessages = ctx.native
    if isinstance(reply, Reply):
        message = anthropic.encode_message(reply.body)
        if native.answer is not None:
            message = native.answer.restore(message)
        return Reply(reply.status, msgspec.json.encode(message), JSON_TYPE, reply.headers)
    encoder = anthropic.StreamEncoder(ctx.request.model, input_tokens=ctx.prompt_estimate(), native=native.answer)
    return StreamReply(reencoded(reply, encoder, anthropic.ping()), reply.status, reply.content_type, reply.headers,
                       reply.abandon)


class Messages:
    """``POST /v1/messages``: a chat model call behind Anthropic's wire."""

    __slots__ = ("_call",)
    refusal = staticmethod(_rendered)  # the listener's own refusals of this route, in Anthropic's shape

    def __init__(self, call: ModelCall) -> None:
        self._call = call

    async def check_headers(self, exchange: Exchange) -> None:
        try:
            await self._call.check_headers(exchange)
        except GatewayError as exc:
            raise _rendered(exc) from None

    async def __call__(self, exchange: Exchange) -> Reply | StreamReply:
        try:
            return await self._call(exchange)
        except GatewayError as exc:
            return anthropic.error_reply(exc)


class CountTokens:
    """``POST /v1/messages/count_tokens``: the prompt tokens a Messages request would take, counted by
    the estimator limits reserve with (the model's tokenizer where one is configured); authenticated,
    authorized, routed and limited like a call (a request and a concurrency slot, no tokens), recorded
    with no tokens; nothing is sent upstream and nothing is spent. A model served by an ``api: anthropic``
    upstream is counted by that upstream, after the input guard (``native``)."""

    __slots__ = ("_stages", "_finish", "_guard")
    refusal = staticmethod(_rendered)

    def __init__(self, stages: Sequence[Stage], finish: Callable[[RequestContext], None],
                 guard: Stage | None = None) -> None:
        self._stages = tuple(stages)
        self._finish = finish  # settle the limits and account, however the count ends
        self._guard = guard

    async def check_headers(self, exchange: Exchange) -> None:
        try:
            self._stages[0](RequestContext(exchange, "messages.count_tokens"))  # authenticate: never waits
        except GatewayError as exc:
            raise _rendered(exc) from None

    async def __call__(self, exchange: Exchange) -> Reply:
        ctx = RequestContext(exchange, "messages.count_tokens")
        try:
            for stage in self._stages:
                if (waiting := stage(ctx)) is not None:
                    await waiting
            counted = await count_natively(ctx, self._guard) or Reply.json({"input_tokens": ctx.prompt_estimate()})
            if ctx.limit_headers:
                counted.headers = {**ctx.limit_headers, **(counted.headers or {})}
            return counted
        except GatewayError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            if ctx.limit_headers:
                exc.headers = {**ctx.limit_headers, **(exc.headers or {})}
            return anthropic.error_reply(exc)
        finally:
            if ctx.principal is not None:  # an unauthenticated count is not an identity's request
                self._finish(ctx)
