"""The upstream transport interface: one small abstract class, one implementation per protocol."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from ..core.config import Upstream


class UpstreamReply:
    """A complete upstream answer: status, body and the headers a caller may see."""

    __slots__ = ("status", "body", "retry_after")

    def __init__(self, status: int, body: bytes, retry_after: str | None = None) -> None:
        self.status = status
        self.body = body
        self.retry_after = retry_after


class UpstreamStream(abc.ABC):
    """An upstream answer that arrived with a 200 and whose body is still coming."""

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """Bytes as they arrive; raises ``UpstreamError``/``UpstreamTimeout`` on a cut or a stall."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop reading and drop the connection (the client left, or we are done)."""

    def ready(self) -> bool:
        """True when the next step of ``chunks()`` will not wait (a piece or the end is already
        there); the relay then skips arming its keepalive timer. False when it cannot tell."""
        return False


class Transport(abc.ABC):
    """Sends a request to one backend, in the wire it speaks (``api``: ``openai`` or ``anthropic``)."""

    name: str
    api: str = "openai"

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def send(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> UpstreamReply:
        """POST and read the whole answer, whatever its status; ``headers`` are added (a traceparent)."""

    async def probe(self) -> bool | None:
        """Whether the backend answers at all (an active health check); None: this transport cannot tell."""
        return None

    async def fetch(self, path: str) -> bytes | None:
        """GET ``path`` from the backend server's root and the body of a 200 answer (a model list, for its
        digests), on a connection of its own; None: no 200 answer, or this transport cannot ask."""
        return None

    @abc.abstractmethod
    async def open_stream(self, path: str, body: bytes, headers: dict[str, str] | None = None
                          ) -> UpstreamStream | UpstreamReply:
        """POST a streaming request: a stream on 200, else the complete (error) reply."""


def credentials(cfg: Upstream) -> dict[str, str]:
    """The header that carries an upstream's key: a bearer token to the OpenAI wires (chat completions and
    Responses), ``x-api-key`` to Anthropic's (as its API and SDKs read it). Only this key goes upstream, never a caller's."""
    if not cfg.api_key:
        return {}
    if cfg.api == "anthropic":
        return {"x-api-key": cfg.api_key}
    return {"Authorization": f"Bearer {cfg.api_key}"}
