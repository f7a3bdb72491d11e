"""Messages requests to upstreams that speak Anthropic's API themselves (``upstreams[].api: anthropic``).

Such a request runs the one path as on the translated route: decoded and validated into the chat request
first (authorize, route, guard-in and the limits' reservation read that), and its answer governed in the
chat form by the one output guard (``sluice.wire.anthropic.native`` says why). What differs is each
attempt's leg, chosen per attempt by the API of the target it lands on, so a fallback of the other kind
works: to an ``api: anthropic`` target the caller's own body goes (``wire.anthropic.messages_body``) to
``/messages``, with the caller's ``anthropic-version`` (``2023-06-01`` if it sent none) and
``anthropic-beta`` byte for byte; the key is the upstream's, set by its transport, and the caller's
``x-api-key`` and ``Authorization`` never go. Its answer is read into the chat form (``whole``, ``stream``).
To any other target the translated chat request goes, as before. A Responses request has a native leg
of its own (``native_responses``) on the same hook: ``leg`` asks the request's ``NativeForm`` for each
attempt's path and body; a request with none (chat completions, legacy completions, embeddings) to an
upstream that speaks only another API is refused (``wrong_api``).

``count_natively`` answers ``/v1/messages/count_tokens`` from an Anthropic upstream's own count, after
the input guard (the prompt now leaves the gateway).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import msgspec

from ..core.errors import InvalidRequest, UpstreamError
from ..core.exchange import Reply
from ..core.wire import ChatCompletionRequest
from ..upstream import UpstreamStream
from ..upstream.errors import from_status
from ..wire import anthropic
from ..wire.anthropic import CountTokensRequest, MessagesRequest
from .context import RequestContext

log = logging.getLogger("sluice.wire")
ANTHROPIC = "anthropic"
RESPONSES = "responses"
_ONLY = {ANTHROPIC: "Anthropic's Messages API only: call it at /v1/messages",
         RESPONSES: "the OpenAI Responses API only: call it at /v1/responses"}
_RELAYED = ("anthropic-version", "anthropic-beta")


class _Count(msgspec.Struct):
    input_tokens: int


_count = msgspec.json.Decoder(_Count).decode


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The caller's Anthropic headers that go upstream as they came; the version defaults as Anthropic's SDKs set it."""
    out = {"anthropic-version": headers.get("anthropic-version") or anthropic.DEFAULT_VERSION}
    beta = headers.get("anthropic-beta")
    if beta is not None:
        out["anthropic-beta"] = beta
    return out


def _logged(what: str, out: anthropic.Outbound, model: str) -> None:
    if out.dropped:
        log.info("%s: dropped %s for an Anthropic upstream (not governed) for model %s", what, ", ".join(out.dropped),
                 model[:100])
    if out.rewritten:
        log.info("%s: the input guard rewrote the request; sent as guarded, without what chat cannot carry, for model %s",
                 what, model[:100])


def wrong_api(api: str) -> InvalidRequest:
    """The 400 for a request whose target speaks only another API (no translation into it is made)."""
    return InvalidRequest(f"This model's upstream speaks {_ONLY[api]}.", code="wrong_api", param="model")


class NativeForm:
    """A request's own form (``ctx.native``), for its attempts on targets that speak its API: ``prepare`` gives
    an attempt's path, body and headers (None: the chat leg), ``whole`` and ``stream`` read the answer of the
    attempt it prepared into the chat form."""

    __slots__ = ()

    def prepare(self, ctx: RequestContext, api: str) -> tuple[str, bytes, dict[str, str]] | None:
        raise NotImplementedError

    def whole(self, body: bytes) -> bytes:
        raise NotImplementedError

    def stream(self, opened: UpstreamStream) -> UpstreamStream:
        raise NotImplementedError


class NativeMessages(NativeForm):
    """One Messages request's own form, for its attempts on ``api: anthropic`` targets (``ctx.native``)."""

    __slots__ = ("source", "translated", "dropped", "_caller", "answer")

    def __init__(self, translated: anthropic.Translated, headers: Mapping[str, str]) -> None:
        self.source: MessagesRequest = translated.source
        self.translated: ChatCompletionRequest = translated.request  # as decoded: what guard-in may rewrite since
        self.dropped = translated.dropped  # what the chat form could not carry
        self._caller = headers  # read for the relayed headers by an attempt on an Anthropic upstream
        # what an Anthropic answer carries beside its chat form; None until an attempt goes to an Anthropic
        # upstream (most go to chat ones: nothing is made for them)
        self.answer: anthropic.NativeAnswer | None = None

    def prepare(self, ctx: RequestContext, api: str) -> tuple[str, bytes, dict[str, str]] | None:
        """This attempt's path, body and headers when its target speaks Anthropic's API; None: the chat leg."""
        if api == RESPONSES:
            raise wrong_api(api)
        if api != ANTHROPIC:
            if self.answer is not None:
                self.answer.reset(False)
            if self.dropped:
                log.info("messages: dropped %s (no chat equivalent) for model %s", ", ".join(self.dropped),
                         self.source.model[:100])
            return None
        if self.answer is None:
            self.answer = anthropic.NativeAnswer()
        self.answer.reset(True)
        target = ctx.target
        assert target is not None
        out = anthropic.messages_body(self.source, self.translated, ctx.request, model=target.upstream_model,
                                      stream=ctx.stream)
        _logged("messages", out, self.source.model)
        return "/messages", out.body, relayed_headers(self._caller)

    def whole(self, body: bytes) -> bytes:
        """A whole answer in the chat form (an Anthropic message read; a chat completion as it is)."""
        answer = self.answer
        return anthropic.chat_completion(body, answer) if answer is not None and answer.active else body

    def stream(self, opened: UpstreamStream) -> UpstreamStream:
        """A stream in the chat form (an Anthropic stream read as it arrives; a chat stream as it is)."""
        answer = self.answer
        return ChatStream(opened, anthropic.ChatEvents(answer)) if answer is not None and answer.active else opened


def leg(ctx: RequestContext, api: str, path: str, chat_body: Callable[[RequestContext], bytes]
        ) -> tuple[str, bytes, dict[str, str] | None]:
    """An attempt's path, body and headers for a target of ``api``: natively for a request whose API the
    upstream speaks, else the chat request; a request of another API to an upstream that speaks only
    Anthropic's or the Responses API is refused (chat completions, legacy completions and embeddings are
    not translated into those: call it at its own route)."""
    native = ctx.native
    if isinstance(native, NativeForm):
        got = native.prepare(ctx, api)
        if got is not None:
            return got
    elif api in _ONLY:
        raise wrong_api(api)
    return path, chat_body(ctx), None


class ChatStream(UpstreamStream):
    """A native upstream's stream, read into the chat form's events as its bytes arrive (``events.feed``:
    the upstream's bytes in, the pieces to relay out)."""

    __slots__ = ("_inner", "_events")

    def __init__(self, inner: UpstreamStream, events: Any) -> None:
        self._inner = inner
        self._events = events

    async def chunks(self) -> AsyncIterator[bytes]:
        inner = self._inner.chunks()
        feed = self._events.feed
        try:
            async for piece in inner:  # type: ignore[attr-defined]
                pieces = feed(piece)
                if not pieces:
                    yield b""  # nothing to relay yet: the relay goes back to its keepalive timer
                for p in pieces:
                    yield p
        finally:
            await inner.aclose()  # type: ignore[attr-defined]

    def ready(self) -> bool:
        return self._inner.ready()

    def close(self) -> None:
        self._inner.close()


async def count_natively(ctx: RequestContext, guard: Callable[[RequestContext], Awaitable[None]] | None) -> Reply | None:
    """``count_tokens`` by the routed target's own ``/messages/count_tokens`` if it speaks Anthropic's API
    (None: it does not, count by the estimate). The input guard runs first: the prompt now leaves."""
    target = ctx.target
    source = ctx.native
    assert target is not None and target.deployment is not None and isinstance(source, CountTokensRequest)
    deployment = target.deployment
    if deployment.replicas[0].transport.api != ANTHROPIC:
        return None
    translated = ctx.request
    if guard is not None:
        guard(ctx)  # the input guard never waits
    out = anthropic.count_body(source, translated, ctx.request, model=target.upstream_model)
    _logged("count_tokens", out, source.model)
    replica = deployment.pick(ctx.request.messages) or await deployment.wait(ctx.request.messages)
    try:
        reply = await replica.transport.send("/messages/count_tokens", out.body, relayed_headers(ctx.exchange.headers))
    finally:
        deployment.done(replica)
    if reply.status != 200:
        raise from_status(reply)
    try:
        n = _count(reply.body).input_tokens
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError("The upstream's token count is not one.") from None
    return Reply.json({"input_tokens": n})


__all__ = ["ANTHROPIC", "RESPONSES", "ChatStream", "NativeForm", "NativeMessages", "count_natively", "leg",
           "relayed_headers", "wrong_api"]
