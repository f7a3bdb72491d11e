"""Errors for a Responses caller: OpenAI's envelope ``{"error": {"message", "type", "param", "code"}}``
for a refusal before the stream, and the ``error`` object of a ``response.failed`` event after it.

Schema errors are described the way OpenAI words them (``Missing required parameter``,
``Unknown parameter``, ``Invalid type``, ``Invalid value``) with ``param`` naming the place
(``input[2].content[0].type``), never quoting the value that was sent: msgspec quotes a bad
value (``Invalid value 'x'``), this module does not pass that on.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from sluice.core.errors import GatewayError, InvalidRequest, error_body

_encode = msgspec.json.encode
_AT = re.compile(r" - at `\$([^`]*)`$")
_FIELD = re.compile(r"`([^`]*)`")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


def error_bytes(exc: GatewayError) -> bytes:
    """The OpenAI error envelope for ``exc``, encoded."""
    return _encode(error_body(exc))


def failure(exc: GatewayError) -> dict[str, str]:
    """The ``error`` of a failed Response: OpenAI's codes for it are few (``ResponseError.code``),
    so a rate limit is ``rate_limit_exceeded``, another refusal ``invalid_prompt``, the rest ``server_error``."""
    if exc.status == 429:
        code = "rate_limit_exceeded"
    elif 400 <= exc.status < 500:
        code = "invalid_prompt"
    else:
        code = "server_error"
    return {"code": code, "message": exc.message}


def refused(where: str, why: str) -> InvalidRequest:
    """The 400 for a feature sluice does not serve, naming the field."""
    return InvalidRequest(f"'{where}' is not supported: {why}", code="unsupported_parameter", param=where)


def _join(where: str, field: str) -> str:
    return f"{where}.{field}" if where and field else where or field


def invalid(exc: msgspec.ValidationError) -> InvalidRequest:
    """The 400 for a body that does not fit the schema: the place and the kind of fault, not the value."""
    text = str(exc)
    at = _AT.search(text)
    where = at.group(1).lstrip(".").replace("[...]", "") if at else ""
    head = text[:at.start()] if at else text
    if head.startswith(("Object missing required field", "Object contains unknown field")):
        name = _FIELD.search(head)
        field = name.group(1) if name and _NAME.match(name.group(1)) else ""
        param = _join(where, field)
        if head.startswith("Object missing"):
            return InvalidRequest(f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param)
        message = f"Unknown parameter: '{param}'." if field else f"Unknown parameter in '{where or 'the body'}'."
        return InvalidRequest(message, code="unknown_parameter", param=param or None)
    if not where:
        return InvalidRequest(f"The request body does not fit the Responses schema: {head}.", code="invalid_type")
    if head.startswith(("Invalid value", "Invalid enum value")):
        reason = "unknown or unsupported type" if where.endswith("type") else "unsupported value"
        return InvalidRequest(f"Invalid value for '{where}': {reason}.", code="invalid_value", param=where)
    if "'" in head or '"' in head:  # a message that quotes what was sent: say no more than that it is wrong
        return InvalidRequest(f"Invalid value for '{where}'.", code="invalid_value", param=where)
    kind = "type" if ", got `" in head else "value"  # "Expected `int`, got `str`" / "Expected `float` <= 2.0"
    return InvalidRequest(f"Invalid {kind} for '{where}': {head}.", code=f"invalid_{kind}", param=where)


def not_json() -> InvalidRequest:
    """The 400 for a body that is not JSON."""
    return InvalidRequest("The request body is not valid JSON.", code="invalid_json")


def upstream_error(info: Any) -> GatewayError:
    """A chat stream's error event (the upstream's, or sluice's own) as the gateway's error."""
    code, kind = getattr(info, "code", None), getattr(info, "type", None)
    if isinstance(code, int) and 400 <= code <= 599:
        status = code
    elif kind == "rate_limit_error" or code == "rate_limit_exceeded":
        status = 429
    elif kind == "invalid_request_error":
        status = 400
    else:
        status = 502
    return GatewayError(getattr(info, "message", None) or "The upstream failed mid-stream.", status=status)
