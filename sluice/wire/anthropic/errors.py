"""Anthropic's error shape: ``{"type": "error", "error": {"type", "message"}}`` and its statuses.

A ``GatewayError`` raised anywhere in the pipeline renders here for a Messages caller. Schema
errors are described by where they are and what was wrong, never by the value that was sent:
msgspec quotes a bad value (``Invalid value 'x'``), this module does not pass that on.
"""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

from sluice.core.errors import GatewayError, InvalidRequest
from sluice.core.exchange import JSON_TYPE, Reply

# Status -> Anthropic's error type (docs.claude.com/en/api/errors). Another 4xx is an
# invalid_request_error, as Anthropic says it uses that type for unlisted 4xx codes.
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}
OVERLOADED = 529  # Anthropic's status for "try again later"; sluice's 503 (unavailable, shed) maps here


def error_status(exc: GatewayError) -> int:
    """The HTTP status a Messages caller gets for ``exc``: 503 becomes Anthropic's 529."""
    return OVERLOADED if exc.status == 503 else exc.status


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an (already mapped) status."""
    known = ERROR_TYPES.get(status)
    if known is not None:
        return known
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(exc: GatewayError) -> dict[str, Any]:
    """The Anthropic error body for ``exc``."""
    return {"type": "error", "error": {"type": error_type(error_status(exc)), "message": exc.message}}


def error_bytes(exc: GatewayError) -> bytes:
    """The Anthropic error body for ``exc``, encoded."""
    return msgspec.json.encode(error_body(exc))


def error_reply(exc: GatewayError) -> Reply:
    """``exc`` as the answer an Anthropic SDK expects: its status (503 is 529), body and ``retry-after``."""
    headers = dict(exc.headers) if exc.headers else {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(exc.retry_after)))
    return Reply(error_status(exc), error_bytes(exc), JSON_TYPE, headers or None)


def error_event(exc: GatewayError) -> bytes:
    """``exc`` as an SSE ``error`` event, for a failure after the stream's 200 was sent."""
    return b"event: error\ndata: " + error_bytes(exc) + b"\n\n"


_AT = re.compile(r" - at `\$\.?([^`]*)`$")
_FIELD = re.compile(r"`([^`]*)`")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_INDEX = re.compile(r"\[(\d+)\]")


def _path(msgspec_path: str) -> str:
    """``$.messages[0].content[1]`` as Anthropic writes it: ``messages.0.content.1``."""
    return _INDEX.sub(r".\1", msgspec_path).strip(".").replace("[...]", "")


def describe(exc: msgspec.ValidationError) -> str:
    """A message for a schema error that names the place and the kind of fault, not the value."""
    text = str(exc)
    at = _AT.search(text)
    where = _path(at.group(1)) if at else ""
    head = text[:at.start()] if at else text
    if head.startswith(("Object missing required field", "Object contains unknown field")):
        name = _FIELD.search(head)
        field = name.group(1) if name and _NAME.match(name.group(1)) else ""
        where = ".".join(p for p in (where, field) if p)
        reason = "Field required" if head.startswith("Object missing") else "Extra inputs are not permitted"
    elif head.startswith("Invalid value") and where.endswith("type"):
        reason = "unknown or unsupported type"
    elif head.startswith(("Invalid value", "Invalid enum value")):
        reason = "invalid value"
    elif "'" in head or '"' in head:  # a message that quotes what was sent: say no more than that it is wrong
        reason = "invalid value"
    else:  # "Expected `int`, got `str`", "Expected `float` <= 1": types and bounds, nothing sent
        reason = head
    return f"{where}: {reason}" if where else reason


def invalid(exc: msgspec.ValidationError) -> InvalidRequest:
    """The 400 for a body that does not fit the schema."""
    return InvalidRequest(describe(exc), param=None)


def not_json() -> InvalidRequest:
    """The 400 for a body that is not JSON."""
    return InvalidRequest("The request body is not valid JSON.", code="invalid_json")
