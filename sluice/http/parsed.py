"""A request as the native server's parser hands it to the connection that answers it."""

from __future__ import annotations

import asyncio

from ..core.errors import GatewayError
from .wire import Headers


class ParsedRequest:
    """A request whose head has been parsed; its body may still be arriving."""

    __slots__ = ("method", "url", "headers", "body", "size", "complete", "waiter", "error", "keep_alive",
                 "expect", "chunked", "length", "head", "http10", "max_body", "stream", "taken")

    def __init__(self, method: str, url: bytes, headers: Headers, keep_alive: bool, http10: bool = False) -> None:
        self.method = method
        self.url = url
        self.headers = headers
        self.body: list[bytes | bytearray] = []
        self.size = 0
        self.complete = False
        self.waiter: asyncio.Future[None] | None = None
        self.error: GatewayError | None = None
        self.keep_alive = keep_alive
        self.expect = False
        self.chunked = False
        self.length = -1
        self.head = method == "HEAD"
        self.http10 = http10
        self.max_body = 0  # its route's own body limit once it was asked for (past the listener's)
        self.stream = False  # its body is handed to the route's ``stream_body`` as it arrives (a file upload)
        self.taken = 0  # bytes of a streamed body the route has taken so far

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
