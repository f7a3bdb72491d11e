"""What the native server answers a request it refuses while parsing it, and how a parser
callback stops the parse with that answer."""

from __future__ import annotations

from ..core.errors import GatewayError, PayloadTooLarge


class HeadTooLarge(GatewayError):
    status = 431
    type = "invalid_request_error"
    code = "request_header_too_large"  # the same code the control plane (aiohttp) gives


class UriTooLong(GatewayError):
    status = 414
    type = "invalid_request_error"
    code = "uri_too_long"


class RequestTimeout(GatewayError):
    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class ExpectationFailed(GatewayError):
    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"


def too_large(limit: int) -> GatewayError:
    return PayloadTooLarge(f"The request body exceeds {limit} bytes.")


def head_too_large() -> GatewayError:
    return HeadTooLarge("The request headers are too large.")


class Refuse(Exception):
    """Raised inside a parser callback to stop parsing; carries the answer the client gets."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error
