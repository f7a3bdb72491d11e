"""The OpenAI Responses API on the chat pipeline: ``POST /v1/responses`` and its stored responses.

A Responses request is decoded into the chat request (``DecodeResponses``: a ``previous_response_id``
chain is rebuilt from the caller's own memory first, so an unknown, expired, deleted or foreign id is
a 404, never ignored), runs the same stages as a chat completion, and its answer is re-encoded by
``sluice.wire.responses``: a whole reply as a Response object, a stream event by event. A ``store:
true`` response is saved (sealed, per identity) before the caller is answered, so the next turn of
the chain finds it on any replica; ``GET``/``DELETE /v1/responses/{id}`` and ``.../input_items``
read and delete it for its own identity only. An attempt on an ``api: responses`` upstream sends the
request natively, the chain rebuilt as its input, and reads its answer into the chat form (``native_responses``).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from ..core.errors import InvalidRequest, NotFound, Unavailable
from ..core.exchange import JSON_TYPE, Exchange, Reply, StreamReply
from ..core.wire import ChatCompletionRequest
from ..memory import BrokenChain, ResponseMemory
from ..wire import responses
from .context import RequestContext
from .endpoints import Stage
from .reencode import reencoded
from .native_responses import NativeResponses
from .stages.decode import checked_body

_encode = msgspec.json.encode
_MAX_PAGE = 100


class Source:
    """What the Responses adapter keeps of the caller's request (``ctx.source``): the request, its own
    input items, the response id and creation time it will be answered with."""

    __slots__ = ("request", "items", "id", "created_at")

    def __init__(self, request: Any, items: list[dict[str, Any]]) -> None:
        self.request = request
        self.items = items
        self.id = responses.response_id()
        self.created_at = int(time.time())


def _kept(request: Any) -> bool:
    """Whether the response is stored: ``store`` is true unless the caller says ``false`` (the API's default)."""
    return request.store is not False


def _gone(what: str, param: str | None = None) -> NotFound:
    return NotFound(f"{what} not found.", param=param, code="not_found")


class DecodeResponses:
    """Stage: the body as a chat request (``ctx.request``), the chain of ``previous_response_id`` before it."""

    __slots__ = ("_memory", "_max_bytes", "_max_depth", "_types")

    def __init__(self, memory: ResponseMemory, *, max_bytes: int, max_depth: int,
                 types: dict[str, type[ChatCompletionRequest]] | None = None) -> None:
        self._memory = memory
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._types = types or {}

    async def __call__(self, ctx: RequestContext) -> None:
        source = responses.parse(checked_body(ctx, self._max_bytes, self._max_depth))
        history: list[dict[str, Any]] = []
        previous = source.previous_response_id
        if previous:
            try:
                history = await self._memory.history(previous, ctx.principal.identity_id)  # type: ignore[union-attr]
            except BrokenChain as exc:
                if exc.too_long:
                    raise InvalidRequest("The chain of previous_response_id is longer than this gateway keeps.",
                                         param="previous_response_id") from None
                raise _gone(f"Previous response with id '{previous[:100]}'", "previous_response_id") from None
        translated = responses.to_chat(source, history, self._types.get(source.model, ChatCompletionRequest))
        ctx.request = translated.request
        ctx.source = Source(source, responses.input_items(source))
        # each attempt sends the chat request or, to an `api: responses` upstream, this one natively; its drops
        # are logged by the attempt they apply to
        ctx.native = NativeResponses(source, history, translated)


class Encode:
    """The chat answer of a Responses request in its shape; a ``store: true`` one saved before it is answered."""

    __slots__ = ("_memory",)

    def __init__(self, memory: ResponseMemory) -> None:
        self._memory = memory

    async def _save(self, ctx: RequestContext, response: dict[str, Any]) -> None:
        await self._memory.save(ctx.principal.identity_id, response, ctx.source.items)  # type: ignore[union-attr]

    async def __call__(self, ctx: RequestContext, reply: Reply | StreamReply) -> Reply | StreamReply:
        src: Source = ctx.source
        if isinstance(reply, Reply):
            body = responses.encode_response(reply.body, id=src.id, request=src.request, created_at=src.created_at)
            if _kept(src.request):
                await self._save(ctx, body)
            return Reply(reply.status, _encode(body), JSON_TYPE, reply.headers)
        encoder = responses.StreamEncoder(id=src.id, request=src.request, created_at=src.created_at,
                                          input_tokens=ctx.prompt_estimate(), hold_end=_kept(src.request))
        return StreamReply(reencoded(reply, encoder, finish=self._finish(ctx, encoder)), reply.status, reply.content_type,
                           reply.headers, reply.abandon)

    def _finish(self, ctx: RequestContext, encoder: Any) -> Callable[[], Awaitable[bytes]]:
        """The end of a stream: a complete answer is stored before ``response.completed`` tells the caller it
        may chain on it, or the stream fails if the store cannot take it."""
        async def finish() -> bytes:
            if not encoder.held:
                return b""
            try:
                await self._save(ctx, encoder.response())
                return encoder.release()
            except Unavailable as exc:
                ctx.status, ctx.error_code = exc.status, exc.code
                return encoder.fail(exc)
        return finish


class StoredResponses:
    """``GET``/``DELETE /v1/responses/{response_id}`` and ``GET .../input_items``, for their identity only:
    any other identity gets the 404 an unknown id gets."""

    __slots__ = ("_authenticate", "_memory")

    def __init__(self, authenticate: Stage, memory: ResponseMemory) -> None:
        self._authenticate = authenticate
        self._memory = memory

    async def _who(self, exchange: Exchange) -> str:
        ctx = RequestContext(exchange, "responses")
        self._authenticate(ctx)
        return ctx.principal.identity_id  # type: ignore[union-attr]

    async def _load(self, exchange: Exchange) -> Any:
        who = await self._who(exchange)
        rid = exchange.params["response_id"]
        stored = await self._memory.load(rid, who)
        if stored is None:
            raise _gone(f"Response with id '{rid[:100]}'", "response_id")
        return stored

    async def get(self, exchange: Exchange) -> Reply:
        return Reply.json((await self._load(exchange)).response)

    async def delete(self, exchange: Exchange) -> Reply:
        who = await self._who(exchange)
        rid = exchange.params["response_id"]
        if not await self._memory.delete(rid, who):
            raise _gone(f"Response with id '{rid[:100]}'", "response_id")
        return Reply.json({"id": rid, "object": "response", "deleted": True})

    async def input_items(self, exchange: Exchange) -> Reply:
        items = list((await self._load(exchange)).input)
        q = exchange.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= _MAX_PAGE:
            raise InvalidRequest(f"limit must be an integer from 1 to {_MAX_PAGE}.", param="limit")
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'.", param="order")
        if order == "desc":
            items.reverse()
        after = q.get("after")
        if after is not None:
            at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
            if at is None:
                raise InvalidRequest("after must be the id of an input item of this response.", param="after")
            items = items[at + 1:]
        page = items[:limit]
        return Reply.json({"object": "list", "data": page, "first_id": page[0].get("id") if page else None,
                           "last_id": page[-1].get("id") if page else None, "has_more": len(items) > limit})

    def routes(self) -> list[tuple[str, str, object]]:
        return [("GET", "/v1/responses/{response_id}", self.get),
                ("DELETE", "/v1/responses/{response_id}", self.delete),
                ("GET", "/v1/responses/{response_id}/input_items", self.input_items)]
