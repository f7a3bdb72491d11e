"""Stage: decode an Anthropic Messages body into the chat request the rest of the pipeline runs on.

The same media type, size and depth checks as every decode come first; then the Messages schema
(``sluice.wire.anthropic``), whose errors quote nothing of the body. A model whose upstream takes
extra parameters gets its wider chat type, so ``top_k`` survives where the upstream reads it.
Features the chat wire cannot carry are dropped by the adapter's named rules, and each drop is
logged (names only) by the attempt that sends the translation, never silent; an attempt on an
``api: anthropic`` upstream sends the request as it came (``pipeline.native``).
"""

from __future__ import annotations

from ...core.wire import ChatCompletionRequest
from ...wire import anthropic
from ..context import RequestContext
from ..native import NativeMessages
from .decode import checked_body


class DecodeMessages:
    """``/v1/messages``: the body as a chat request (``ctx.request``), and as it came for an attempt on an
    Anthropic upstream (``ctx.native``)."""

    __slots__ = ("_max_bytes", "_max_depth", "_types")

    def __init__(self, *, max_bytes: int, max_depth: int,
                 types: dict[str, type[ChatCompletionRequest]] | None = None) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._types = types or {}

    async def __call__(self, ctx: RequestContext) -> None:
        source = anthropic.parse(checked_body(ctx, self._max_bytes, self._max_depth))
        translated = anthropic.to_chat(source, self._types.get(source.model, ChatCompletionRequest))
        ctx.request = translated.request
        ctx.native = NativeMessages(translated, ctx.exchange.headers)  # its drops are logged by the attempt they apply to


class DecodeCount:
    """``/v1/messages/count_tokens``: the body as the chat request whose prompt would be counted."""

    __slots__ = ("_max_bytes", "_max_depth")

    def __init__(self, *, max_bytes: int, max_depth: int) -> None:
        self._max_bytes = max_bytes
        self._max_depth = max_depth

    async def __call__(self, ctx: RequestContext) -> None:
        source = anthropic.parse_count(checked_body(ctx, self._max_bytes, self._max_depth))
        messages, tools, _dropped = anthropic.count_messages(source)
        ctx.request = ChatCompletionRequest(model=source.model, messages=messages, **({"tools": tools} if tools else {}))
        ctx.native = source  # counted by an Anthropic upstream itself when one serves the model
