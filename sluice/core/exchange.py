"""The protocol-neutral request and reply that a listener hands to a handler and back.

Listeners own the HTTP server; handlers (pipeline, admin) own the decisions. Neither knows
the other's types, only these.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

import msgspec

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
# A body larger than this, or of unknown length, is not read before the handler has had its
# say on the headers alone (``check_headers``): a caller without a credential cannot make
# the gateway read megabytes.
HEADERS_FIRST_ABOVE = 64 * 1024


class Exchange:
    """One incoming request: method, path, path parameters, query, headers and body; and the client
    certificate its connection showed (mTLS), as the listener's ``client_certs`` rules read it."""

    __slots__ = ("method", "path", "params", "query", "headers", "body", "peer", "request_id", "peer_cert", "listener")

    def __init__(
        self, method: str, path: str, params: Mapping[str, str], query: Mapping[str, str],
        headers: Mapping[str, str], body: bytes, peer: str | None, request_id: str, peer_cert: Any = None,
        listener: Any = None,
    ) -> None:
        # the named data-plane listener it came through (``identity.Served``), None on a single unnamed one
        self.listener = listener
        self.method = method
        self.path = path
        self.params = params
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer
        self.request_id = request_id
        self.peer_cert = peer_cert  # an ``identity.certs.PeerCertificate``, or None: no certificate to map

    def bearer(self) -> str | None:
        """The token of an ``Authorization: Bearer`` header, or None."""
        value = self.headers.get("Authorization")
        if value is None or len(value) < 8 or value[:7].lower() != "bearer ":
            return None
        token = value[7:].strip()
        return token or None


class Reply:
    """A complete response body."""

    __slots__ = ("status", "body", "content_type", "headers")

    def __init__(self, status: int, body: bytes, content_type: str = JSON_TYPE, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status, msgspec.json.encode(obj), JSON_TYPE, headers)


class StreamReply:
    """A response whose body is produced piece by piece (server-sent events).

    The listener writes each piece as it comes and closes the iterator if the client leaves,
    so the producer's ``finally`` runs in every case.
    """

    __slots__ = ("status", "chunks", "content_type", "headers", "abandon")

    def __init__(
        self, chunks: AsyncGenerator[bytes, None], status: int = 200, content_type: str = SSE_TYPE,
        headers: dict[str, str] | None = None, abandon: Callable[[], None] | None = None,
    ) -> None:
        self.status = status
        self.chunks = chunks
        self.content_type = content_type
        self.headers = headers
        # Called when the listener gives up before the first piece was asked for, because
        # a generator that never started cannot run its own clean-up.
        self.abandon = abandon
