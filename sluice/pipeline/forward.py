"""The upstream leg of the path: send, relay the stream event by event, settle usage.

Whatever happens (a complete answer, an upstream error, a cut stream, a client that
leaves), the account stage sees the context once, with the tokens actually produced.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any

import msgspec
from msgspec import UNSET

from ..core import clock
from ..core.config import Resilience
from ..core.errors import GatewayError, InvalidRequest, UpstreamError, UpstreamTimeout
from ..core.exchange import Reply, StreamReply
from ..core.prompt import completion_text, estimate_tokens
from ..core.wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest, StreamOptions, TokenUsage
from ..routing import Decision, Target
from ..upstream import SSERelay, UpstreamReply, UpstreamStream, error_event
from ..upstream.relay import renamed
from ..limits import INPUT, OUTPUT
from ..upstream.embed_batch import BatchedReply, EmbedBatcher
from ..upstream.errors import from_status
from ..upstream.usage import completion_chars, reported_usage
from .context import RequestContext
from .native import leg

CLIENT_CLOSED = 499  # nginx's convention: the client went away before the answer was complete
_encode = msgspec.json.encode
log = logging.getLogger("sluice.upstream")
_USERINFO = re.compile(r"//[^/@]*@")  # a URL's user:password@, never logged
ROUTE_HEADER = "x-sluice-route"
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _settle(ctx: RequestContext, usage: TokenUsage | None, completion_estimate: int) -> None:
    if usage is not None:
        ctx.prompt_tokens, ctx.completion_tokens, ctx.usage_source = usage.prompt_tokens, usage.completion_tokens, "upstream"
        ctx.cached_tokens, ctx.cache_creation_tokens = usage.cached_tokens, usage.cache_creation_tokens
    else:
        ctx.prompt_tokens = ctx.prompt_estimate()  # the upstream reported none: what the limits reserved
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
        ctx.prompt_tokens, ctx.usage_source = ctx.prompt_estimate(), "estimated"


# Sent, and no answer that says the upstream did no work (a 504 is a proxy's timeout; an answer too
# large to read was work done); unlike upstream_unreachable and upstream_connect_timeout, where
# nothing was sent.
_UNANSWERED = frozenset({UpstreamTimeout.code, "upstream_disconnected", "upstream_response_too_large"})


_NOTED: dict[tuple[str, str], float] = {}  # (upstream URL, model) -> when it was last logged as not served


def _noted(err: GatewayError, ctx: RequestContext, replica: Any) -> GatewayError:
    """``err``; an upstream that does not serve the model asked of it (404) is logged with its URL and that
    model, at most once a minute for each pair: the caller's error names neither, the fix is the operator's."""
    if err.code == "upstream_not_found":
        target: Target = ctx.target  # type: ignore[assignment]
        key = (replica.url, target.upstream_model)
        now = clock.monotonic()
        if now - _NOTED.get(key, -60.0) >= 60.0:
            _NOTED[key] = now
            log.warning("upstream %s at %s does not serve model %r (asked for target %s): check that model's "
                        "upstream_model in the config's models or the policy registry", target.upstream,
                        _USERINFO.sub("//", replica.url), target.upstream_model, target.name)
    return err


class Forward:
    """Sends the decoded request to its target and shapes the reply; on a failure that is safe to
    repeat, tries again (a retry, then the route's fallbacks) within one attempt budget per request."""

    __slots__ = ("_path", "_account", "_budget", "_backoff", "_backoff_max", "_keepalive", "_random", "_batches")

    def __init__(self, path: str, account: Callable[[RequestContext], None], resilience: Resilience | None = None,
                 batches: Mapping[Any, EmbedBatcher] | None = None) -> None:
        r = resilience or Resilience()
        self._batches = batches or None  # embeddings micro-batching (issue 27): a batcher per replica's transport
        self._path = path
        self._account = account
        self._budget = r.max_attempts
        self._backoff = r.backoff_ms / 1000.0
        self._backoff_max = r.backoff_max_ms / 1000.0
        self._keepalive = r.keepalive_s
        self._random = random.random

    def _upstream_body(self, ctx: RequestContext) -> bytes:
        req = ctx.request
        changes: dict = {"model": ctx.target.upstream_model}  # type: ignore[union-attr]
        if ctx.stream:
            # Ask for usage on every stream so a stream is never recorded with zero tokens.
            opts = req.stream_options or StreamOptions()
            changes["stream_options"] = msgspec.structs.replace(opts, include_usage=True)
        return _encode(msgspec.structs.replace(req, **changes))

    def _leg(self, ctx: RequestContext, replica: Any) -> tuple[str, bytes, dict[str, str] | None]:
        """This attempt's path, body and headers, in the wire of its target's API (``pipeline.native``)."""
        api = replica.transport.api
        if ctx.native is None and api == "openai":
            path, body, headers = self._path, self._upstream_body(ctx), None
        else:
            path, body, headers = leg(ctx, api, self._path, self._upstream_body)
        tr = ctx.trace  # None unless this request is sampled for tracing
        if tr is not None:
            traced = tr.attempt(ctx)
            headers = traced if headers is None else {**headers, **traced}
        return path, body, headers

    def _failed(self, ctx: RequestContext, exc: GatewayError, ms: float) -> Target | None:
        """Record a failed attempt; the target of the next one, or None when this error is final."""
        target: Target = ctx.target  # type: ignore[assignment]
        decision: Decision = ctx.decision  # type: ignore[assignment]
        retryable = not isinstance(exc, InvalidRequest)  # the caller's fault is the same everywhere
        if retryable and target.breaker is not None:
            target.breaker.failure()
        decision.attempts.append((target.name, exc.code or "error", ms))
        if len(decision.attempts) >= self._budget:
            return None
        return decision.next_target(target, retryable)

    async def _pause(self, ctx: RequestContext, nxt: Target) -> None:
        if nxt is ctx.target and self._backoff > 0:
            # Full jitter (AWS architecture blog): a retry waits a random share of an exponential cap.
            n = len(ctx.decision.attempts)  # type: ignore[union-attr]
            await asyncio.sleep(self._random() * min(self._backoff_max, self._backoff * (1 << (n - 1))))
        ctx.target = nxt

    async def complete(self, ctx: RequestContext) -> Reply:
        """Non-streaming: upstream round trips until one answers or the attempt budget is spent."""
        prompt = _prompt(ctx.request)
        try:
            while True:
                target: Target = ctx.target  # type: ignore[assignment]
                deployment = target.deployment
                assert deployment is not None  # a target on the data path always has one
                tr = ctx.trace  # None unless this request is sampled for tracing
                t0 = clock.monotonic()
                replica = ctx.transport = deployment.pick(prompt)
                try:
                    if replica is None:  # the upstream's bulkhead is full: wait in its line, or a 503 at once
                        replica = ctx.transport = await deployment.wait(prompt)
                    if tr is None and ctx.native is None and replica.transport.api == "openai":  # _leg's usual case
                        path, body, headers = self._path, self._upstream_body(ctx), None
                    else:
                        path, body, headers = self._leg(ctx, replica)
                    batches = self._batches  # a traced request goes alone: its attempt is its own span
                    if batches is None or headers is not None or (batcher := batches.get(replica.transport)) is None:
                        reply: UpstreamReply = await replica.transport.send(path, body, headers)
                    else:
                        reply = await batcher.send(path, body, ctx.prompt_estimate())
                    err: GatewayError | None = None if reply.status == 200 else _noted(from_status(reply), ctx, replica)
                except GatewayError as exc:
                    err = exc
                finally:
                    if replica is not None:
                        deployment.done(replica)
                ms = (clock.monotonic() - t0) * 1000.0
                if tr is not None:
                    tr.answered(reply.body) if err is None else tr.end_attempt(err.code or "error")
                ctx.upstream_ms = ms
                if err is None:
                    break
                nxt = self._failed(ctx, err, ms)
                if nxt is None:
                    raise err
                await self._pause(ctx, nxt)
        except GatewayError as exc:
            if exc.code in _UNANSWERED:  # the last attempt was sent and never answered
                _charge_reserved(ctx)
            raise
        except asyncio.CancelledError:  # the client left (a listener that cancels its handler)
            ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
            _charge_reserved(ctx)
            raise
        self._succeeded(ctx, ms)
        if ctx.native is not None:  # an Anthropic upstream's message, in the chat form the rest reads
            reply.body = ctx.native.whole(reply.body)
        usage = reported_usage(reply.body)
        _settle(ctx, usage, 0 if usage else estimate_tokens(completion_chars(reply.body)))
        if type(reply) is BatchedReply and usage is not None:  # its share of a batch's usage (upstream.embed_batch)
            ctx.usage_source = reply.source
        body = reply.body if ctx.guard is None else await ctx.guard.reply(reply.body)  # guard-out (issue 12)
        # the reply names the model as the caller did; which version served it is in x-sluice-route
        body = renamed(body, _encode(ctx.request.model))
        return Reply(200, body, headers={ROUTE_HEADER: ctx.decision.header()})  # type: ignore[union-attr]

    @staticmethod
    def _succeeded(ctx: RequestContext, ms: float) -> None:
        target: Target = ctx.target  # type: ignore[assignment]
        if target.breaker is not None:
            target.breaker.success()
        ctx.decision.attempts.append((target.name, "ok", ms))  # type: ignore[union-attr]
        ctx.decision.target = target  # type: ignore[union-attr]

    async def _open(self, ctx: RequestContext) -> UpstreamStream:
        """Open a stream, falling back like a plain request while nothing has reached the client."""
        prompt = _prompt(ctx.request)
        while True:
            deployment = ctx.target.deployment  # type: ignore[union-attr]
            assert deployment is not None  # a target on the data path always has one
            tr = ctx.trace
            t0 = clock.monotonic()
            replica = ctx.transport = deployment.pick(prompt)
            try:
                if replica is None:  # the upstream's bulkhead is full: wait in its line, or a 503 at once
                    replica = ctx.transport = await deployment.wait(prompt)
                path, body, headers = self._leg(ctx, replica)
                opened = await replica.transport.open_stream(path, body, headers)
                err = _noted(from_status(opened), ctx, replica) if isinstance(opened, UpstreamReply) else None
            except GatewayError as exc:
                err = exc
            except BaseException:  # the client left while the stream opened: its place goes back
                if replica is not None:
                    deployment.done(replica)
                ctx.transport = None
                raise
            ms = (clock.monotonic() - t0) * 1000.0
            if tr is not None and err is not None:
                tr.end_attempt(err.code or "error")
            ctx.upstream_ms = ms
            if err is None:  # an Anthropic upstream's stream is read into the chat form as it arrives
                return opened if ctx.native is None else ctx.native.stream(opened)  # type: ignore[return-value]
            if replica is not None:
                deployment.done(replica)
            nxt = self._failed(ctx, err, ms)
            if nxt is None:
                ctx.transport = None
                raise err
            await self._pause(ctx, nxt)

    async def stream(self, ctx: RequestContext) -> StreamReply:
        """Streaming: open upstream (errors before the first byte are plain errors), then relay."""
        t0 = clock.monotonic()
        try:  # sent, and no headers yet: unanswered as a non-streaming request would be
            opened = await self._open(ctx)
        except GatewayError as exc:
            if exc.code in _UNANSWERED:
                _charge_reserved(ctx)
            raise
        req: ChatCompletionRequest = ctx.request
        wants_usage = bool(req.stream_options and req.stream_options.include_usage)
        started = [False]
        current = [opened]

        def abandon() -> None:
            if not started[0]:
                current[0].close()
                _done(ctx)
                ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
                self._account(ctx)

        # a cached stream's usage event is kept for the requests that follow it (each takes it only if it asked)
        keep_usage = wants_usage or (ctx.cache is not None and ctx.cache.flight is not None)
        chunks = self._relay(ctx, current, t0, started, strip_usage=not keep_usage)
        headers = {**_SSE_HEADERS, ROUTE_HEADER: ctx.decision.header(ctx.target)}  # type: ignore[union-attr]
        return StreamReply(chunks, headers=headers, abandon=abandon)

    async def _relay(
        self, ctx: RequestContext, current: list[UpstreamStream], t0: float, started: list[bool], *, strip_usage: bool
    ) -> AsyncGenerator[bytes, None]:
        started[0] = True
        rename = _encode(ctx.request.model)  # every event names the model as the caller did
        relay = SSERelay(strip_usage=strip_usage, rename=rename)
        guard = ctx.guard  # guard-out (issue 12): minimises every chat stream; None for embeddings
        sent = False
        pending: asyncio.Future | None = None
        try:
            while True:
                upstream = current[0]
                a0 = clock.monotonic()
                chunks = upstream.chunks()
                try:
                    while True:
                        if not sent and self._keepalive > 0 and not upstream.ready():
                            # SSE comments while a slow model has not sent its first token, so
                            # idle timeouts of load balancers in between do not cut the stream
                            # (a first piece already here needs no timer, nor the task it takes).
                            pending = asyncio.ensure_future(chunks.__anext__())
                            while not await _ready(pending, self._keepalive):
                                yield KEEPALIVE
                            task, pending = pending, None
                            chunk = task.result()
                        else:
                            chunk = await chunks.__anext__()
                        out = relay.feed(chunk)
                        if guard is not None and out:
                            out = await guard.feed(out)
                        if not out:
                            continue
                        good = out if relay.clean or not _malformed(out) else _good_prefix(out)
                        if good:
                            if not sent:  # from here on a failure can no longer fall back
                                ctx.ttft_ms = ctx.elapsed_ms()
                                sent = True
                            yield good
                        if good is not out:
                            raise _malformed_event()
                except StopAsyncIteration:  # the upstream's body ended: complete, or cut short
                    if relay.done:
                        self._succeeded(ctx, (clock.monotonic() - a0) * 1000.0)
                        return
                    exc: GatewayError = UpstreamError("The upstream stream ended before it was complete.",
                                                      code="upstream_stream_cut")
                except GatewayError as e:
                    exc = e
                upstream.close()
                _done(ctx)
                ctx.transport = None  # given back: a cancel in the pause below must not give it back again
                if ctx.trace is not None:
                    ctx.trace.end_attempt(exc.code or "error")
                nxt = self._failed(ctx, exc, (clock.monotonic() - a0) * 1000.0)
                if sent or nxt is None:
                    raise exc
                await self._pause(ctx, nxt)
                relay = SSERelay(strip_usage=strip_usage, rename=rename)
                if guard is not None:  # what it held of the failed attempt never reaches the client
                    guard = ctx.guard = guard.fresh()
                current[0] = await self._open(ctx)
        except GatewayError as exc:
            ctx.status, ctx.error_code = exc.status, exc.code
            yield error_event(exc)
        except BaseException:
            # GeneratorExit (the client left) or cancellation: stop the upstream too.
            ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
            raise
        finally:
            if pending is not None:
                pending.cancel()
            if ctx.transport is not None:
                current[0].close()
                _done(ctx)
                ctx.transport = None
            ctx.upstream_ms = (clock.monotonic() - t0) * 1000.0
            _settle(ctx, relay.usage, relay.completion_estimate)
            self._account(ctx)


KEEPALIVE = b": keepalive\n\n"


def _done(ctx: RequestContext) -> None:
    """The attempt on ``ctx.transport`` (the replica it was placed on) has ended."""
    ctx.target.deployment.done(ctx.transport)  # type: ignore[union-attr,arg-type]


def _prompt(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> str | Sequence[Any]:
    """What placement hashes: a chat's whole conversation, a legacy completion's prompts (prefix affinity reads
    it only if asked)."""
    if isinstance(request, CompletionRequest):
        return completion_text(request)
    return "" if type(request) is EmbeddingRequest else request.messages  # type: ignore[union-attr]


async def _ready(task: asyncio.Future, timeout: float) -> bool:
    """Wait until ``task`` is done (True) or ``timeout`` passes (False), leaving it running.

    A waiter future, a timer and a done-callback: 6.5 us a stream against 13.6 us for
    ``asyncio.wait`` (uvloop, timeit in bench/README.md).
    """
    if task.done():
        return True
    waiter = asyncio.get_running_loop().create_future()

    def wake(_: object = None) -> None:
        if not waiter.done():
            waiter.set_result(None)

    timer = waiter.get_loop().call_later(timeout, wake)
    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        timer.cancel()
        task.remove_done_callback(wake)
    return task.done()


def _malformed_event() -> UpstreamError:
    return UpstreamError("The upstream sent an event that is not server-sent-events data.", code="upstream_bad_event")


def _malformed(block: bytes) -> bool:
    """Whether a block of whole events holds one that is not SSE (a line with no field name).

    Counting is memchr-fast; a block of well-formed OpenAI-style events has one ``data:`` (or a
    ``:`` comment) per blank line. Content that itself contains "data:" can only hide a bad event,
    never make a good one look bad.
    """
    events = block.count(b"\n\n")
    fields = block.count(b"data:")
    if fields >= events:
        return False
    return fields + block.count(b"\n\n:") + block.startswith(b":") + block.count(b"event:") < events


_FIELDS = (b"data:", b":", b"event:", b"id:", b"retry:")


def _good_prefix(block: bytes) -> bytes:
    """The whole events before the first malformed one (the rare path: only after ``_malformed``)."""
    at = 0
    while at < len(block):
        end = block.find(b"\n\n", at)
        if not block.startswith(_FIELDS, at):
            return block[:at]
        at = end + 2
    return block


def is_stream(request: ChatCompletionRequest | CompletionRequest | EmbeddingRequest) -> bool:
    return isinstance(request, (ChatCompletionRequest, CompletionRequest)) and request.stream is not UNSET \
        and bool(request.stream)
