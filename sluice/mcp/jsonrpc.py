"""JSON-RPC framing of the MCP endpoint: one message per POST, parsed by the ``mcp`` SDK's own types.

The common case is read without the SDK's pydantic models, and only accepted there: a request whose
envelope has nothing but ``jsonrpc: "2.0"``, an integer or string ``id``, a ``method`` and object ``params``
(``parse``), ``tools/call`` params of only ``name``, object ``arguments`` and ``_meta`` (``call_params``), and
a tool result of text blocks that every protocol version in ``PLAIN_VERSIONS`` answers unchanged
(``plain_result``). Anything else (every refusal among it) takes the SDK's path, which decides as before.

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


class Request(msgspec.Struct, frozen=True):
    """A JSON-RPC request read by the fast path: what the gateway reads of an ``mt.JSONRPCRequest``."""

    id: int | str
    method: str
    params: dict[str, Any] | None = None


REQUESTS = (mt.JSONRPCRequest, Request)  # what ``parse`` returns for a request (the rest is answered 202)
_ENVELOPE = frozenset({"jsonrpc", "id", "method", "params"})
_ID_BOUND = 2**63  # an id beyond a 64-bit integer takes the SDK's path


def _request(body: bytes) -> Request | None:
    """The request, when the body is one in the common shape; None: let the SDK's parser decide."""
    try:
        m = msgspec.json.decode(body)  # strict JSON: no NaN, no number out of range, valid UTF-8
    except msgspec.DecodeError:
        return None
    if type(m) is not dict or m.get("jsonrpc") != "2.0" or not m.keys() <= _ENVELOPE:
        return None
    rid, method, params = m.get("id"), m.get("method"), m.get("params")
    if not ((type(rid) is int and -_ID_BOUND < rid < _ID_BOUND) or type(rid) is str):  # bool is no id
        return None
    if type(method) is not str or (params is not None and type(params) is not dict):
        return None
    return Request(rid, method, params)


def parse(body: bytes) -> mt.JSONRPCRequest | Request | mt.JSONRPCNotification | mt.JSONRPCResponse | mt.JSONRPCError:
    """One JSON-RPC message, or a ``Refusal`` (HTTP 400) saying what is wrong with it."""
    fast = _request(body)
    if fast is not None:
        return fast
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


class CallParams(msgspec.Struct, frozen=True):
    """``tools/call`` params read by the fast path: what the gateway reads of ``mt.CallToolRequestParams``."""

    name: str
    arguments: dict[str, Any] | None = None
    meta: dict[str, Any] | None = None


_CALL_KEYS = frozenset({"name", "arguments", "_meta"})


def call_params(params: dict[str, Any] | None) -> CallParams | None:
    """The params of a ``tools/call`` in the common shape; None: let the SDK's models read (or refuse) them.
    A ``_meta`` with a ``progressToken`` goes the SDK's way too (it checks the token's type)."""
    if params is None or not params.keys() <= _CALL_KEYS:
        return None
    name, arguments, meta = params.get("name"), params.get("arguments"), params.get("_meta")
    if type(name) is not str or (arguments is not None and type(arguments) is not dict):
        return None
    if meta is not None and (type(meta) is not dict or "progressToken" in meta):
        return None
    return CallParams(name, arguments, meta)


_RESULT_KEYS = frozenset({"content", "structuredContent", "isError", "_meta"})
_TEXT_KEYS = frozenset({"type", "text"})


def plain_result(body: dict[str, Any]) -> bool:
    """Whether a tool result is only text blocks (``{"type": "text", "text": ...}``), an object of structured
    content, a boolean ``isError`` and an object ``_meta``, none of them null: the shape ``PLAIN_VERSIONS`` answer
    as it is."""
    if not body.keys() <= _RESULT_KEYS:
        return False
    content = body.get("content")
    if type(content) is not list:
        return False
    for block in content:
        if type(block) is not dict or block.keys() != _TEXT_KEYS or block["type"] != "text" or type(block["text"]) is not str:
            return False
    return (type(body.get("isError", False)) is bool and type(body.get("structuredContent", {})) is dict
            and type(body.get("_meta", {})) is dict)


def _plain_versions() -> frozenset[str]:
    """The protocol versions whose wire shape of a tools/call result keeps a plain result as it is: asked of the
    SDK's own serializer at import, so a version that would reshape it (or an SDK that changes) is left out."""
    from mcp_types.methods import serialize_server_result
    from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
    probe = {"content": [{"type": "text", "text": "t"}, {"type": "text", "text": ""}],
             "structuredContent": {"a": [1, 2.5, None, True, {"b": "c"}], "": {}}, "isError": False,
             "_meta": {"sluice/injection": 0.5, "k": {"x": None}}}
    out = set()
    for version in HANDSHAKE_PROTOCOL_VERSIONS:
        try:
            if serialize_server_result("tools/call", version, probe) == probe:
                out.add(version)
        except (KeyError, ValueError, ValidationError):
            continue
    return frozenset(out)


PLAIN_VERSIONS = _plain_versions()


def result(request_id: Any, value: dict[str, Any]) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": request_id, "result": value})


def error(request_id: Any, refusal: Refusal) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": request_id, "error": {
        "code": refusal.code, "message": refusal.message, "data": {"code": refusal.reason, **refusal.data}}})
