"""A chat stream re-encoded in another API's event grammar, as the Messages and Responses adapters answer.

One loop for every such API: the encoder's opening events go out with the first piece (a token, or a
keepalive while the first token is pending), which is one write fewer per stream than sending them
alone and no later than chat's own first event; each keepalive of the relay becomes the API's own
(Anthropic's ``ping``, or the SSE comment as it is); the end may do one more step (``finish``: the
Responses adapter stores the answer before its closing event goes out).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from ..core.exchange import StreamReply
from .forward import KEEPALIVE


async def reencoded(reply: StreamReply, encoder: Any, keepalive: bytes = KEEPALIVE,
                    finish: Callable[[], Awaitable[bytes]] | None = None) -> AsyncGenerator[bytes, None]:
    """``reply``'s chat events through ``encoder`` (``start``, ``feed``, ``close``), then ``finish``'s bytes."""
    chunks = reply.chunks
    started = False
    head = encoder.start()
    try:
        async for piece in chunks:
            started = True
            out = keepalive if piece == KEEPALIVE else encoder.feed(piece)
            if head:
                out, head = head + out, b""
            if out:
                yield out
        tail = head + encoder.close()
        if finish is not None:
            tail += await finish()
        if tail:
            yield tail
    finally:
        if not started and reply.abandon is not None:
            reply.abandon()  # the chat producer never ran: its own clean-up cannot
        await chunks.aclose()
