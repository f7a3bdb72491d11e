"""JSON-RPC framing of the MCP endpoint: one message per POST, parsed by the ``mcp`` SDK's own types.

Batches (a JSON array) are refused: the protocol dropped them in 2025-06-18, and one message per
request keeps one decision per request. Every refusal is a JSON-RPC error object; its ``data.code``
is sluice's name for the reason, as the ``code`` of the OpenAI envelope is on the model routes.
"""

from __future__ import annotations

from typing import Any

import msgspec
import mcp.types as mt
from pydantic import ValidationError

# Server-defined codes (JSON-RPC reserves -32000..-32099 for them).
REFUSED = -32010  # the gateway's policy refused the call (not allowed, invalid arguments, approval state)
UPSTREAM = -32011  # the upstream MCP server failed, timed out, or answered what the gateway would not pass on
NO_SESSION = -32012  # no such session for this caller (unknown, expired, ended, another identity's)


class Refusal(Exception):
    """A JSON-RPC error to answer, with the HTTP status it goes with."""

    def __init__(self, code: int, message: str, reason: str, status: int = 200, headers: dict[str, str] | None = None,
                 data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.reason, self.status = code, message, reason, status
        self.headers = headers
        self.data = data or {}


def parse(body: bytes) -> mt.JSONRPCRequest | mt.JSONRPCNotification | mt.JSONRPCResponse | mt.JSONRPCError:
    """One JSON-RPC message, or a ``Refusal`` (HTTP 400) saying what is wrong with it."""
    if body.lstrip()[:1] == b"[":
        raise Refusal(mt.INVALID_REQUEST, "Batches are not supported: send one JSON-RPC message per request.",
                      "batch_not_supported", 400)
    try:
        return mt.jsonrpc_message_adapter.validate_json(body)
    except ValidationError as exc:
        if any(e.get("type") == "json_invalid" for e in exc.errors(include_url=False, include_input=False)):
            raise Refusal(mt.PARSE_ERROR, "The body is not JSON.", "parse_error", 400) from None
        raise Refusal(mt.INVALID_REQUEST, "The body is not a JSON-RPC 2.0 request, notification or response.",
                      "invalid_request", 400) from None


def result(request_id: Any, value: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": request_id, "result": value})


def error(request_id: Any, refusal: Refusal) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": request_id, "error": {
        "code": refusal.code, "message": refusal.message, "data": {"code": refusal.reason, **refusal.data}}})
