"""Request bodies of the control plane: decoded into their struct, or an OpenAI-shaped 400."""

from __future__ import annotations

import msgspec

from ..core.errors import InvalidRequest


def decode(body: bytes, kind: type) -> object:
    """The body as ``kind`` (an empty body is ``{}``); a bad one is a 400 naming what is wrong."""
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"Invalid request body: {exc}") from None
    except msgspec.DecodeError:
        raise InvalidRequest("The request body is not valid JSON.", code="invalid_json") from None
