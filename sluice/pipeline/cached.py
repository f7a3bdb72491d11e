"""The response cache on the request path (issue 27): look up after guard-in, keep what a miss answered.

``Lookup`` is a stage, after guard-in and before limits: the ``cache`` section of the policy version the
request was routed under picks the rule set (none: the stage costs one attribute check); a request that
must not be cached is a ``bypass``; else the key (``sluice.cache.key``) is looked up and a hit is served
at once in the caller's mode (``Served``): whole, or as a chat event stream the other APIs' adapters
re-encode like any other, with a fresh id. A hit counts the request in the limits (its tokens only if the
rule says) and asks no upstream; its usage record says ``usage_source: cache`` with no upstream tokens.

``Keeper.keep`` runs on what the upstream answered: the header says ``miss`` or ``bypass``, and a miss is
stored when it was a complete success that no detector or tool decision touched (a stream: only once its
``[DONE]`` went out; a stream cut or left by its client is never kept), within the rule's size.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

import msgspec

from ..cache import CacheStore, Entry, cache_key, from_stream, from_whole, scope_of
from ..cache import wire
from ..cache.entry import encode as encode_entry
from ..cache.flight import Flight, Reader, fresh_chat_id
from ..cache.rules import Rule
from ..core.errors import UpstreamError
from ..core.exchange import Reply, StreamReply
from ..core.wire import ChatCompletionRequest
from ..upstream import error_event
from .context import RequestContext
from .forward import CLIENT_CLOSED, ROUTE_HEADER, is_stream
from .semantic import Semantic
from .stages.limit import Limit

log = logging.getLogger("sluice.cache")
HEADER = "x-sluice-cache"
_encode = msgspec.json.encode
_SSE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Served(Exception):
    """A cached answer: the rest of the path (limits' reservation, the upstream) is skipped."""

    def __init__(self, reply: Reply | StreamReply, accounted: bool = False) -> None:
        self.reply = reply
        self.accounted = accounted  # a stream that follows a leader: settled and accounted when it ends


class CacheState:
    """One request's dealings with the cache: its rule, key, the target it was looked up for, the outcome."""

    __slots__ = ("rule", "key", "target", "outcome", "entry", "flight", "semantic")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.key = ""
        self.target: Any = None
        self.outcome = "bypass"
        self.entry: wire.Prepared | None = None  # the answer served (its wire bytes and token counts)
        self.flight: Flight | None = None  # this request's answer in flight: identical ones follow it
        self.semantic: tuple[str, Any] | None = None  # a semantic rule's (bucket, vector) its answer is indexed under

    def counted(self) -> tuple[int, int]:
        """The tokens a hit counts in the limits: the answer's when its rule says so, else none."""
        e = self.entry
        return (e.prompt_tokens, e.completion_tokens) if e is not None and self.rule.count_tokens else (0, 0)


def _bypass(ctx: RequestContext, req: ChatCompletionRequest, rule: Rule) -> bool:
    """Requests whose answer is not cached: the caller said ``x-sluice-cache: off``, sampling (a temperature
    other than 0; none given is the API's 1), several choices, log probabilities (an entry keeps none), guard-in
    found something, or another API's request carried what the chat form drops (it would not be in the key)."""
    if ctx.exchange.headers.get(HEADER) == "off":
        return True
    t = req.temperature
    if not rule.sampled and (type(t) is not float and type(t) is not int or t != 0):
        return True
    n = req.n
    if not rule.several and type(n) is int and n > 1:
        return True
    if req.logprobs is True or ctx.flagged:
        return True
    return bool(getattr(ctx.native, "dropped", None))


class Lookup:
    """Stage: the cache, between guard-in and limits. A miss while an identical request (same key: same scope)
    is in flight on this process is served by that one's upstream call (request coalescing, issue 27 item 3):
    a stream that follows a streaming leader gets its events as they come; any other waits for the answer.
    If the leader fails before its first event (or its answer is not one to serve), each waiter asks itself."""

    __slots__ = ("_store", "_limit", "_flights", "_finish", "semantic")

    def __init__(self, store: CacheStore, limit: Limit, flights: dict[str, Flight],
                 finish: Callable[[RequestContext], None]) -> None:
        self.semantic = Semantic()  # mode `semantic`: an exact miss looks for a similar entry (pipeline.semantic)
        self._store = store
        self._limit = limit
        self._flights = flights  # key -> the answer in flight for it
        self._finish = finish  # settle and account: a coalesced stream is accounted when it ends

    def __call__(self, ctx: RequestContext) -> Awaitable[None] | None:
        """None at once when the policy version has no cache rules (the usual case: no coroutine is made), or
        the request is not one that is cached; else the look-up to await."""
        active = ctx.policy
        rules = active.cache if active is not None else None
        if rules is None or not isinstance(ctx.request, ChatCompletionRequest):
            return None  # chat, Messages and Responses are cached; legacy completions and embeddings are not
        return self._look_up(ctx, rules)

    async def _look_up(self, ctx: RequestContext, rules: Any) -> None:
        req = ctx.request
        p, target = ctx.principal, ctx.target
        rule = rules.rule_for(p.identity_name, p.team, req.model, ctx.decision.route.name)  # type: ignore[union-attr]
        if rule is None:
            return
        ctx.cache = state = CacheState(rule)
        store = self._store
        if _bypass(ctx, req, rule) or not store.available:
            return
        state.outcome, state.target = "miss", target
        scope = scope_of(rule.scope, p.identity_id, p.team)  # type: ignore[union-attr]
        state.key = key = cache_key(rules.digest, scope, target, req)
        data = await store.get(key)
        how = "cache"
        if data is None and rule.semantic is not None:
            flight = self._flights.get(key)
            if flight is None or not flight.joinable:  # an identical request in flight is followed, not embedded
                data = await self.semantic.find(ctx, state, store, rules.digest, scope)
                how = "semantic"
        if data is None:
            flights = self._flights
            flight = flights.get(key)
            if flight is not None and flight.joinable:
                await self._join(ctx, state, flight)  # raises Served, or returns: this one asks itself
            state.flight = mine = Flight(is_stream(req), rule.max_entry_bytes * 8)  # events carry their envelope
            now = flights.get(key)
            if now is None or not now.joinable:  # the first (that may be joined): identical ones follow this one
                flights[key] = mine
            return
        try:
            entry = wire.decoder.decode(data)
        except Exception:  # an entry this version cannot read (written by another): a miss, overwritten
            return
        state.outcome, state.entry = "hit", entry
        ctx.usage_source = how  # `semantic`: an entry found by its last user message's meaning
        await self._limit.count_hit(ctx, *state.counted())
        raise Served(_serve(ctx, entry))

    async def _join(self, ctx: RequestContext, state: CacheState, flight: Flight) -> None:
        req = ctx.request
        stream = is_stream(req)
        flight.waiting += 1
        reader = None
        try:
            if stream and flight.stream:  # event by event from the leader's first one
                if not await asyncio.shield(flight.first) or not flight.joinable:
                    return  # no event came (the leader failed first), or the stream outgrew the buffer
                reader = flight.join()
                entry = None
            else:
                entry = await asyncio.shield(flight.result)  # a waiter that leaves cancels only its own wait
                if entry is None:  # the leader's answer could not be served (an error, a cut): this one asks itself
                    return
        finally:
            flight.waiting -= 1
            if reader is None:
                flight.idle_check()  # the last one waiting left: nobody may need the upstream any longer
        state.outcome, state.entry = "hit", entry
        ctx.usage_source = "coalesced"
        try:
            await self._limit.count_hit(ctx, *state.counted())
        except BaseException:
            if reader is not None:
                flight.leave(reader)
            raise
        if reader is None:
            raise Served(_serve(ctx, entry))  # type: ignore[arg-type]
        raise Served(self._follow(ctx, state, flight, reader), accounted=True)

    def _follow(self, ctx: RequestContext, state: CacheState, flight: Flight, reader: Reader) -> StreamReply:
        """A waiter's stream: the leader's events as they come, with its own id, model name and usage choice."""
        req = ctx.request
        ctx.stream = True
        lead = flight.leader_model
        mine = _encode(req.model)
        chunks = self._fanout(ctx, state, flight, flight.read(
            reader, fresh_id=fresh_chat_id(), usage=_wants_usage(req), broken=_BROKEN,
            model=None if lead is None or lead == mine else (lead, mine)))

        def abandon() -> None:  # the stream was never started: its clean-up is ours
            flight.leave(reader)
            ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
            self._finish(ctx)
        headers = {**_SSE, HEADER: "hit", ROUTE_HEADER: ctx.decision.header(ctx.target)}  # type: ignore[union-attr]
        return StreamReply(chunks, headers=headers, abandon=abandon)

    async def _fanout(self, ctx: RequestContext, state: CacheState, flight: Flight,
                      events: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        try:
            async for piece in events:
                if ctx.ttft_ms is None:
                    ctx.ttft_ms = ctx.elapsed_ms()
                yield piece
            if flight.broken or flight.failed is not None:
                ctx.status, ctx.error_code = flight.failed or (500, "internal_error")
        except BaseException:
            ctx.status, ctx.error_code = CLIENT_CLOSED, "client_closed"
            raise
        finally:
            await events.aclose()
            r = flight.result
            if r.done() and not r.cancelled():
                state.entry = r.result()  # what a rule that counts tokens settles
            self._finish(ctx)


_BROKEN = error_event(UpstreamError("The answer this request followed ended before it was complete.",
                                   code="upstream_stream_cut"))


def _wants_usage(req: ChatCompletionRequest) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def _serve(ctx: RequestContext, entry: wire.Prepared) -> Reply | StreamReply:
    req = ctx.request
    headers = {HEADER: "hit", ROUTE_HEADER: ctx.decision.header(ctx.target)}  # type: ignore[union-attr]
    if not is_stream(req):
        return Reply(200, wire.whole(entry, _encode(req.model)), headers=headers)
    ctx.stream = True
    body = wire.events(entry, _encode(req.model), _wants_usage(req))
    ctx.ttft_ms = ctx.elapsed_ms()
    return StreamReply(_once(body), headers={**_SSE, **headers})


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


class Keeper:
    """What a miss answered, stored in the background (the caller never waits on the cache's writes)."""

    __slots__ = ("_store", "_writes", "_flights")

    def __init__(self, store: CacheStore, flights: dict[str, Flight]) -> None:
        self._store = store
        self._writes: set[asyncio.Task] = set()
        self._flights = flights

    def land(self, state: CacheState, entry: wire.Prepared | None) -> None:
        """The leader's answer to the requests waiting on it (None: none they may be served; each asks itself)."""
        flight = state.flight
        if flight is not None:
            state.flight = None
            if self._flights.get(state.key) is flight:
                del self._flights[state.key]
            if not flight.first.done():
                flight.first.set_result(False)
            if not flight.result.done():
                flight.result.set_result(entry)

    def keep(self, ctx: RequestContext, reply: Reply | StreamReply) -> Reply | StreamReply:
        state: CacheState = ctx.cache
        if reply.headers is None:
            reply.headers = {}
        reply.headers[HEADER] = state.outcome
        if state.outcome != "miss":
            return reply
        if type(reply) is StreamReply:
            flight = state.flight
            if flight is None:
                return reply
            return self._lead(ctx, state, flight, reply)
        self.land(state, self._put(ctx, state, from_whole(reply.body, ctx.prompt_tokens, ctx.completion_tokens))
                  if _clean(ctx, state) else None)
        return reply

    def _lead(self, ctx: RequestContext, state: CacheState, flight: Flight, reply: StreamReply) -> StreamReply:
        """The leader's stream read by a pump of its own: its caller reads the flight like any waiter."""
        req = ctx.request
        flight.leader_model = _encode(req.model)
        abandon = reply.abandon

        def end(complete: bool) -> None:  # the upstream's stream is over: keep it if it may be kept, land it
            entry = None
            if ctx.status != 200:
                flight.failed = (ctx.status, ctx.error_code)
            elif complete and flight.joinable and _clean(ctx, state):  # whole, in the buffer, no detector fired
                entry = self._put(ctx, state, from_stream(flight.chunks, ctx.prompt_tokens, ctx.completion_tokens))
            self.land(state, entry)

        def idle() -> None:  # no caller reads it any longer: stop the upstream, as for a caller that leaves
            pump = flight.pump
            if pump is None or pump.done():
                return
            pump.cancel()
            if not flight.started:  # the pump never ran: the relay never started, its clean-up is ours
                if abandon is not None:
                    abandon()
                flight.ended = True
                self.land(state, None)

        flight.on_idle = idle
        reader = flight.join()
        flight.pump = asyncio.ensure_future(flight.run(reply.chunks, end))
        reply.chunks = flight.read(reader, fresh_id=None, usage=_wants_usage(req), model=None, broken=_BROKEN)
        reply.abandon = lambda: flight.leave(reader)  # the stream was never started: one reader fewer
        return reply

    def _put(self, ctx: RequestContext, state: CacheState, entry: Entry | None) -> wire.Prepared | None:
        """Store ``entry`` if its rule lets it be kept, encoded for serving; what was kept, or None."""
        rule = state.rule
        if entry is None or (not rule.tool_calls and entry.has_calls()):
            return None
        if len(encode_entry(entry)) > rule.max_entry_bytes:  # the entry's own size, as the rule states it
            return None
        prepared = wire.prepare(entry)
        data = wire.encode(prepared)
        p, t = ctx.principal, ctx.target
        tags = {"identity": p.identity_id, "team": p.team or "", "model": t.model,  # type: ignore[union-attr]
                "route": ctx.decision.route.name}  # type: ignore[union-attr]
        task = asyncio.ensure_future(self._store.put(state.key, data, rule.ttl_s, tags))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        if state.semantic is not None:  # found by meaning too: its vector goes beside it, once it is stored
            task = asyncio.ensure_future(self._index(task, state.semantic, state.key, rule.ttl_s))
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)
        return prepared

    async def _index(self, stored: asyncio.Future, semantic: tuple[str, Any], key: str, ttl_s: float) -> None:
        await stored
        await self._store.vectors.add(semantic[0], key, semantic[1], ttl_s)


def _clean(ctx: RequestContext, state: CacheState) -> bool:
    """A complete success, from the target it was looked up for, that no detector or tool decision touched."""
    if ctx.status != 200 or ctx.error_code is not None or ctx.target is not state.target:
        return False
    g = ctx.guard
    if g is None:
        return True
    return not g.kinds and all(j.verdict == "allow" for j in g.judgements)
