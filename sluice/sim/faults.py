"""Faults an operator or a test injects at runtime: errors, delay, cut streams, hangs."""

from __future__ import annotations

import random
from typing import Annotated

import msgspec


class FaultSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /sim/faults``; every field defaults to "no fault"."""

    error_status: Annotated[int, msgspec.Meta(ge=400, le=599)] | None = None
    error_rate: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0
    error_count: Annotated[int, msgspec.Meta(ge=0)] | None = None
    delay_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    disconnect_after_chunks: Annotated[int, msgspec.Meta(ge=0)] | None = None
    hang: bool = False
    # Streams: wait this long after the 200 before the first event (a slow first token).
    first_token_delay_ms: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Streams: stop sending (connection kept open) after this many content chunks; 0: before any event.
    stall_after_chunks: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # Streams: after this many content chunks send one event that is not SSE; 0: as the first event.
    malformed_after_chunks: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # Streams: send the 200 and drop the connection before any event.
    cut_before_first_event: bool = False
    # A completion's first token is this text (a model that writes e.g. "data: [DONE]").
    say_first: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    # The ``Retry-After`` seconds an injected 429 or 503 carries (vLLM's own refusals say 1).
    retry_after: Annotated[int, msgspec.Meta(ge=0)] = 1


_ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    408: "RequestTimeoutError",
    409: "ConflictError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    500: "InternalServerError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


def error_type(status: int) -> str:
    """The ``type`` vLLM puts in an error body for a status."""
    return _ERROR_TYPES.get(status, "InternalServerError" if status >= 500 else "BadRequestError")


def error_body(status: int, message: str) -> bytes:
    """A vLLM-shaped error body."""
    return msgspec.json.encode(
        {"object": "error", "message": message, "type": error_type(status), "param": None, "code": status}
    )


class Faults:
    """The current fault spec plus what it has used up (``error_count`` counts down)."""

    __slots__ = ("spec", "active", "_remaining", "_rng")

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self.clear()

    def set(self, spec: FaultSpec) -> None:
        """Replace the current faults."""
        self.spec = spec
        self._remaining = spec.error_count
        self.active = spec != FaultSpec()

    def in_stream(self) -> tuple[FaultSpec | None, int | None, int | None, int | None]:
        """For a stream about to start: the active spec (or None), and the chunk counts after which it is
        cut, stalls, or turns malformed (None: not at all)."""
        spec = self.spec if self.active else None
        if spec is None:
            return None, None, None, None
        return spec, spec.disconnect_after_chunks, spec.stall_after_chunks, spec.malformed_after_chunks

    def clear(self) -> None:
        """Back to a healthy backend."""
        self.set(FaultSpec())

    def error_status(self) -> int | None:
        """The status this request fails with, or None; consumes one of ``error_count``."""
        if not self.active:
            return None
        spec = self.spec
        status = spec.error_status or 500
        # error_count and error_rate narrow when errors happen; error_status alone fails everything.
        if self._remaining is not None and self._remaining > 0:
            self._remaining -= 1
            return status
        if spec.error_rate > 0:
            return status if self._rng.random() < spec.error_rate else None
        if spec.error_status is not None and spec.error_count is None:
            return status
        return None

    def state(self) -> dict[str, object]:
        """The spec as JSON-ready data, with what is left of ``error_count``."""
        out = msgspec.to_builtins(self.spec)
        out["error_count_remaining"] = self._remaining
        return out
