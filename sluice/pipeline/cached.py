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
from collections.abc import AsyncGenerator
from typing import Any

from ..cache import CacheStore, Entry, cache_key, entry_decoder, events, from_stream, from_whole, scope_of, whole
from ..cache.entry import encode as encode_entry
from ..cache.rules import Rule
from ..core.exchange import Reply, StreamReply
from ..core.wire import ChatCompletionRequest
from .context import RequestContext
from .forward import ROUTE_HEADER, is_stream
from .stages.limit import Limit

log = logging.getLogger("sluice.cache")
HEADER = "x-sluice-cache"
_SSE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Served(Exception):
    """A cached answer: the rest of the path (limits' reservation, the upstream) is skipped."""

    def __init__(self, reply: Reply | StreamReply) -> None:
        self.reply = reply


class CacheState:
    """One request's dealings with the cache: its rule, key, the target it was looked up for, the outcome."""

    __slots__ = ("rule", "key", "target", "outcome", "entry", "flight")

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.key = ""
        self.target: Any = None
        self.outcome = "bypass"
        self.entry: Entry | None = None
        self.flight: asyncio.Future | None = None  # this request leads identical ones in flight: they wait on it

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
    is in flight on this process waits for that one's answer instead of asking the upstream again (request
    coalescing, issue 27 item 3); it is served as a hit then, or goes upstream itself if that one failed."""

    __slots__ = ("_store", "_limit", "_flights")

    def __init__(self, store: CacheStore, limit: Limit, flights: dict[str, asyncio.Future]) -> None:
        self._store = store
        self._limit = limit
        self._flights = flights  # key -> the answer (an Entry, or None) of the request in flight for it

    async def __call__(self, ctx: RequestContext) -> None:
        active = ctx.policy
        rules = active.cache if active is not None else None
        if rules is None:
            return
        req = ctx.request
        if not isinstance(req, ChatCompletionRequest):
            return  # chat, Messages and Responses are cached; legacy completions and embeddings are not
        p, target = ctx.principal, ctx.target
        rule = rules.rule_for(p.identity_name, p.team, req.model, ctx.decision.route.name)  # type: ignore[union-attr]
        if rule is None:
            return
        ctx.cache = state = CacheState(rule)
        store = self._store
        if _bypass(ctx, req, rule) or not store.available:
            return
        state.outcome, state.target = "miss", target
        state.key = cache_key(rules.digest, scope_of(rule.scope, p.identity_id, p.team), target, req)  # type: ignore[union-attr]
        data = await store.get(state.key)
        source = "cache"
        if data is None:
            flight = self._flights.get(state.key)
            if flight is None:  # the first: it goes upstream, and whoever asks the same meanwhile waits for it
                self._flights[state.key] = state.flight = asyncio.get_running_loop().create_future()
                return
            got = await asyncio.shield(flight)  # a waiter that leaves cancels only its own wait
            if got is None:  # the first one's answer could not be kept (an error, a cut): this one asks itself
                return
            entry, source = got, "coalesced"
        else:
            try:
                entry = entry_decoder.decode(data)
            except Exception:  # an entry this version cannot read (written by another): a miss, overwritten
                return
        state.outcome, state.entry = "hit", entry
        ctx.usage_source = source
        await self._limit.count_hit(ctx, *state.counted())
        raise Served(_serve(ctx, entry))


def _serve(ctx: RequestContext, entry: Entry) -> Reply | StreamReply:
    req = ctx.request
    headers = {HEADER: "hit", ROUTE_HEADER: ctx.decision.header(ctx.target)}  # type: ignore[union-attr]
    if not is_stream(req):
        return Reply(200, whole(entry, req.model), headers=headers)
    ctx.stream = True
    body = events(entry, req.model, bool(req.stream_options and req.stream_options.include_usage))
    ctx.ttft_ms = ctx.elapsed_ms()
    return StreamReply(_once(body), headers={**_SSE, **headers})


async def _once(body: bytes) -> AsyncGenerator[bytes, None]:
    yield body


class Keeper:
    """What a miss answered, stored in the background (the caller never waits on the cache's writes)."""

    __slots__ = ("_store", "_writes", "_flights")

    def __init__(self, store: CacheStore, flights: dict[str, asyncio.Future]) -> None:
        self._store = store
        self._writes: set[asyncio.Task] = set()
        self._flights = flights

    def land(self, state: CacheState, entry: Entry | None) -> None:
        """The leader's answer to the requests waiting on it (None: none they may be served; each asks itself)."""
        flight = state.flight
        if flight is not None:
            state.flight = None
            if self._flights.get(state.key) is flight:
                del self._flights[state.key]
            flight.set_result(entry)

    def keep(self, ctx: RequestContext, reply: Reply | StreamReply) -> Reply | StreamReply:
        state: CacheState = ctx.cache
        if reply.headers is None:
            reply.headers = {}
        reply.headers[HEADER] = state.outcome
        if state.outcome != "miss":
            return reply
        if type(reply) is StreamReply:
            reply.chunks = self._tee(ctx, state, reply.chunks)
            abandon = reply.abandon

            def abandoned() -> None:  # the stream was never started: nobody waits on it any longer
                if abandon is not None:
                    abandon()
                self.land(state, None)
            reply.abandon = abandoned
        else:
            self.land(state, self._put(ctx, state, from_whole(reply.body, ctx.prompt_tokens, ctx.completion_tokens))
                      if _clean(ctx, state) else None)
        return reply

    async def _tee(self, ctx: RequestContext, state: CacheState, inner: AsyncGenerator[bytes, None]
                   ) -> AsyncGenerator[bytes, None]:
        parts: list[bytes] | None = []
        size, cap = 0, state.rule.max_entry_bytes * 8  # events carry their envelope: past this the entry is too big
        entry = None
        try:
            async for chunk in inner:
                if parts is not None:
                    size += len(chunk)
                    if size <= cap:
                        parts.append(chunk)
                    else:
                        parts = None
                yield chunk
            await inner.aclose()  # the relay's own clean-up (settling, the usage record) has run
            if parts is not None and _clean(ctx, state):  # the stream went out whole: its end was written
                entry = self._put(ctx, state, from_stream(parts, ctx.prompt_tokens, ctx.completion_tokens))
        finally:
            await inner.aclose()
            self.land(state, entry)

    def _put(self, ctx: RequestContext, state: CacheState, entry: Entry | None) -> Entry | None:
        """Store ``entry`` if its rule lets it be kept; the entry kept, or None."""
        rule = state.rule
        if entry is None or (not rule.tool_calls and entry.has_calls()):
            return None
        data = encode_entry(entry)
        if len(data) > rule.max_entry_bytes:
            return None
        p, t = ctx.principal, ctx.target
        tags = {"identity": p.identity_id, "team": p.team or "", "model": t.model,  # type: ignore[union-attr]
                "route": ctx.decision.route.name}  # type: ignore[union-attr]
        task = asyncio.ensure_future(self._store.put(state.key, data, rule.ttl_s, tags))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return entry


def _clean(ctx: RequestContext, state: CacheState) -> bool:
    """A complete success, from the target it was looked up for, that no detector or tool decision touched."""
    if ctx.status != 200 or ctx.error_code is not None or ctx.target is not state.target:
        return False
    g = ctx.guard
    if g is None:
        return True
    return not g.kinds and all(j.verdict == "allow" for j in g.judgements)
