"""Typed errors that every layer raises and the HTTP layer renders as OpenAI error bodies."""

from __future__ import annotations

import errno
import os

import msgspec


class GatewayError(Exception):
    """An error with an HTTP status and an OpenAI-shaped body; the message is safe to show."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.param = param
        self.retry_after = retry_after
        self.headers: dict[str, str] | None = None  # extra response headers (rate-limit state)
        # the body already rendered in another API's error shape (an Anthropic caller's), or None: OpenAI's
        self.rendered: bytes | None = None


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class Unauthenticated(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class Unprocessable(GatewayError):
    status = 422
    type = "invalid_request_error"
    code = "unprocessable_entity"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_error"


class Unavailable(GatewayError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"


class ConfigError(Exception):
    """The configuration is invalid; the message names the field and the reason."""


class ListenError(ConfigError):
    """A listener could not take its address (a busy port, a port below 1024, a host not on this machine):
    one line that names the setting to change, ``data_plane.port`` or, from a command, its flag."""

    def __init__(self, exc: OSError, setting: str, host: str, port: int) -> None:
        self.host, self.port = host, port
        # uvloop's strerror repeats the address: the errno's own words are enough
        self.why = (os.strerror(exc.errno) if exc.errno else str(exc) or type(exc).__name__).lower()
        # a missing address is the host's fault; a taken or privileged port, the port's
        self.setting = setting.rsplit(".", 1)[0] + ".host" if exc.errno == errno.EADDRNOTAVAIL else setting
        super().__init__(self.text(self.setting))

    def text(self, setting: str) -> str:
        advice = "stop what listens there, or set another" if self.why == "address already in use" else "set another"
        return f"cannot listen on {self.host}:{self.port} ({self.why}): {advice} {setting}"


class ErrorDetail(msgspec.Struct):
    """The inside of the OpenAI error envelope."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorEnvelope(msgspec.Struct):
    """Every 4xx and 5xx answer of sluice, as its published contracts (OpenAPI) describe it."""

    error: ErrorDetail


def error_body(exc: GatewayError) -> dict:
    """The OpenAI error envelope: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}}
