"""What an upstream's error status means for the caller, without leaking the upstream."""

from __future__ import annotations

import re

import msgspec

from ..core.errors import GatewayError, InvalidRequest, RateLimited, Unavailable, UpstreamError, UpstreamTimeout
from .base import UpstreamReply

_URL = re.compile(r"\b(?:https?|wss?)://\S+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")


class _Err(msgspec.Struct):
    message: str | None = None


class _ErrEnvelope(msgspec.Struct):
    error: _Err | str | None = None
    message: str | None = None  # vLLM's flat shape
    detail: str | None = None  # FastAPI servers


_decode = msgspec.json.Decoder(_ErrEnvelope)


def upstream_message(body: bytes) -> str | None:
    """The human message in an upstream error body, scrubbed of URLs and addresses."""
    try:
        env = _decode.decode(body)
    except msgspec.DecodeError:
        return None
    err = env.error
    text = err.message if isinstance(err, _Err) else err
    text = text or env.message or env.detail
    if not text:
        return None
    return _URL.sub("[redacted]", text)[:500]


def from_status(reply: UpstreamReply) -> GatewayError:
    """Translate a non-200 upstream reply into the error the caller should see."""
    status = reply.status
    retry = _retry_after(reply.retry_after)
    if status in (400, 413, 422):
        msg = upstream_message(reply.body) or "The upstream model server rejected the request."
        return InvalidRequest(msg, code="upstream_rejected", status=status)
    if status == 429:
        return RateLimited("The upstream model server is rate limiting; retry later.",
                           code="upstream_rate_limited", retry_after=retry or 1.0)
    if status in (401, 403):
        return UpstreamError("The upstream model server rejected the gateway's credentials.", code="upstream_auth")
    if status == 404:
        return UpstreamError("The upstream model server does not serve the configured model.", code="upstream_not_found")
    if status in (503, 529):  # 529: Anthropic's "overloaded"
        return Unavailable("The upstream model server is unavailable; retry later.", code="upstream_unavailable",
                           retry_after=retry or 1.0)
    if status == 504:
        return UpstreamTimeout("The upstream model server timed out.")
    return UpstreamError(f"The upstream model server failed (status {status}).")


def too_large() -> UpstreamError:
    """A whole answer (or its head) over what the gateway reads from an upstream: the upstream did
    answer, so like an unanswered request it is charged what it reserved (pipeline.forward)."""
    return UpstreamError("The upstream model server's answer is larger than this gateway accepts.",
                         code="upstream_response_too_large")


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
