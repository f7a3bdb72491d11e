"""Stage: validate the body before any model sees it: media type, size, depth, schema."""

from __future__ import annotations

import re
from itertools import accumulate
from typing import Any

import msgspec

from ...core.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from ..context import RequestContext

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_BRACKETS = re.compile(rb"[\[\]{}]")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`(?: - at `\$\.?([^`]*)`)?")
# msgspec names a bad dict key "at `key` in `$.logit_bias`" and a bad value "at `$.logit_bias[...]`"
_AT = re.compile(r" - at `(?:key` in `)?\$\.?([^`]*?)(?:\[\.\.\.\])?`$")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects, ignoring brackets inside strings."""
    marks = _BRACKETS.findall(_STRINGS.sub(b"", body))
    return max(accumulate(1 if m in (b"[", b"{") else -1 for m in marks), default=0)


def describe(exc: msgspec.ValidationError) -> tuple[str, str | None]:
    """A caller-facing message and the offending parameter for a schema error."""
    text = str(exc)
    m = _UNKNOWN.match(text)
    if m:
        field = m.group(1) if not m.group(2) else f"{m.group(2)}.{m.group(1)}"
        return f"Unrecognized request argument supplied: {field}", field
    at = _AT.search(text)
    param = at.group(1) if at else None
    if text.startswith("Object missing required field"):
        name = text.split("`")[1]
        param = f"{param}.{name}" if param else name
        return f"Missing required parameter: '{param}'.", param
    return f"Invalid value for '{param or 'body'}': {_AT.sub('', text)}.", param


class _ModelName(msgspec.Struct):
    model: str = ""


_model_name = msgspec.json.Decoder(_ModelName)


def model_of(body: bytes) -> str:
    """The ``model`` a JSON body names ("" when it names none, or is no object)."""
    try:
        return _model_name.decode(body).model
    except msgspec.ValidationError:
        return ""


def checked_body(ctx: RequestContext, max_bytes: int, max_depth: int) -> bytes:
    """The request's body once its media type, size and depth pass (the checks every API's decode makes first)."""
    ex = ctx.exchange
    ctype = ex.headers.get("Content-Type")
    if ctype is not None and not ctype.lower().startswith("application/json"):
        raise UnsupportedMediaType("Send the request body as JSON with 'Content-Type: application/json'.")
    body = ex.body
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"The request body exceeds {max_bytes} bytes.")
    if not body:
        raise InvalidRequest("The request body is empty; send a JSON object.")
    # Cheap bound first: depth cannot exceed the number of opening brackets.
    if body.count(b"[") + body.count(b"{") > max_depth and json_depth(body) > max_depth:
        raise InvalidRequest(f"The JSON body is nested deeper than {max_depth} levels.", code="json_too_deep")
    return body


class Decode:
    """Decodes the JSON body into the endpoint's typed request, or stops with 400/413/415.

    ``extras`` maps a model name to the decoder of its wider request type (the extra
    parameters its upstream accepts). A request first meets the strict decoder, so the
    usual request pays nothing for it; only a refused one is tried against its model's.
    """

    __slots__ = ("_decoder", "_max_bytes", "_max_depth", "_extras")

    def __init__(self, request_type: type, *, max_bytes: int, max_depth: int,
                 extras: dict[str, msgspec.json.Decoder[Any]] | None = None) -> None:
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(request_type)
        self._max_bytes = max_bytes
        self._max_depth = max_depth
        self._extras = extras or None

    def __call__(self, ctx: RequestContext) -> None:
        body = checked_body(ctx, self._max_bytes, self._max_depth)
        try:
            ctx.request = self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            # no object, or a model that is no string: model_of says "" and the strict refusal stands
            wider = self._extras.get(model_of(body)) if self._extras is not None else None
            if wider is None:
                message, param = describe(exc)
                raise InvalidRequest(message, param=param) from None
            try:
                ctx.request = wider.decode(body)
            except msgspec.ValidationError as exc:
                message, param = describe(exc)
                raise InvalidRequest(message, param=param) from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise InvalidRequest(
                "We could not parse the JSON body of your request. Send a valid JSON object.", code="invalid_json"
            ) from None
