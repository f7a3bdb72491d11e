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

from collections.abc import AsyncGenerator, Sequence

import msgspec

from ..core.errors import GatewayError
from ..core.exchange import JSON_TYPE, Exchange, Reply, StreamReply
from ..limits import prompt_tokens
from ..wire import anthropic
from .context import RequestContext
from .endpoints import ModelCall, Stage
from .forward import KEEPALIVE
from .native import NativeMessages, count_natively


def _rendered(exc: GatewayError) -> GatewayError:
    """``exc`` rendered for an Anthropic caller, for the listener that answers it (a refusal from the headers)."""
    exc.rendered, exc.status = anthropic.error_bytes(exc), anthropic.error_status(exc)
    return exc


def _input_estimate(ctx: RequestContext) -> int:
    t = ctx.target
    return prompt_tokens(ctx.request, t.upstream_model, t.model) if t is not None else 0


def encode(ctx: RequestContext, reply: Reply | StreamReply) -> Reply | StreamReply:
    """The chat answer of a Messages request in Anthropic's shape."""
    native: NativeMessages = ctx.native
    if isinstance(reply, Reply):
        message = native.answer.restore(anthropic.encode_message(reply.body))
        return Reply(reply.status, msgspec.json.encode(message), JSON_TYPE, reply.headers)
    encoder = anthropic.StreamEncoder(ctx.request.model, input_tokens=_input_estimate(ctx), native=native.answer)
    return StreamReply(_events(reply, encoder), reply.status, reply.content_type, reply.headers, reply.abandon)


async def _events(reply: StreamReply, encoder: anthropic.StreamEncoder) -> AsyncGenerator[bytes, None]:
    chunks = reply.chunks
    started = False
    try:
        yield encoder.start()  # message_start at once: pings may follow while the first token is pending
        async for piece in chunks:
            started = True
            if piece == KEEPALIVE:
                yield anthropic.ping()
                continue
            out = encoder.feed(piece)
            if out:
                yield out
        tail = encoder.close()
        if tail:
            yield tail
    finally:
        if not started and reply.abandon is not None:
            reply.abandon()  # the chat producer never ran: its own clean-up cannot
        await chunks.aclose()


class Messages:
    """``POST /v1/messages``: a chat model call behind Anthropic's wire."""

    __slots__ = ("_call",)

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
    authorized and routed like a call, but nothing is sent upstream and nothing is spent. A model served
    by an ``api: anthropic`` upstream is counted by that upstream, after the input guard (``native``)."""

    __slots__ = ("_stages", "_guard")

    def __init__(self, stages: Sequence[Stage], guard: Stage | None = None) -> None:
        self._stages = tuple(stages)
        self._guard = guard

    async def check_headers(self, exchange: Exchange) -> None:
        try:
            await self._stages[0](RequestContext(exchange, "messages.count_tokens"))
        except GatewayError as exc:
            raise _rendered(exc) from None

    async def __call__(self, exchange: Exchange) -> Reply:
        ctx = RequestContext(exchange, "messages.count_tokens")
        try:
            for stage in self._stages:
                await stage(ctx)
            counted = await count_natively(ctx, self._guard)
        except GatewayError as exc:
            return anthropic.error_reply(exc)
        return counted or Reply.json({"input_tokens": _input_estimate(ctx)})
