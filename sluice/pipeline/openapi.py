"""The data plane's contract as an OpenAPI 3.1 document, served at ``GET /v1/openapi.json``.

Request bodies are the wire structs the decode stage decodes into (``sluice.core.wire``), as
``msgspec.json.schema_components`` describes them; answers whose shape the upstream decides are
typed loosely; every error is the OpenAI envelope, listed under each status it can have. The
document covers exactly the routes handed to the listener: a route without an entry in
``OPERATIONS`` stops the start, so the contract cannot fall behind the router.
"""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from msgspec import UNSET, UnsetType

from ..core.errors import ErrorEnvelope
from ..core.exchange import JSON_TYPE, SSE_TYPE, Exchange, Reply
from ..core.wire import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from ..identity.exchange import ACCESS_TOKEN, GRANT, ID_TOKEN, JWT
from ..wire.anthropic import CountTokensRequest, MessagesRequest
from ..wire.responses import ResponsesRequest
from ..batches.endpoints import CreateBatch
from .context import RequestContext
from .endpoints import Stage

PATH = "/v1/openapi.json"
_REF = "#/components/schemas/{name}"
_FORM = "application/x-www-form-urlencoded"
_OBJECT: dict[str, Any] = {"type": "object"}


class TokenRequest(msgspec.Struct, kw_only=True):
    """RFC 8693 token exchange: a data-plane key or a federated workload token for an access token."""

    grant_type: Literal[GRANT]  # type: ignore[valid-type]
    subject_token: Annotated[str, msgspec.Meta(min_length=1)]
    subject_token_type: Literal[ACCESS_TOKEN, JWT, ID_TOKEN]  # type: ignore[valid-type]
    audience: str | UnsetType = UNSET
    scope: str | UnsetType = UNSET


class RedeemRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The arguments the caller is about to execute, as strict JSON: exactly the approved ones."""

    arguments: Any


class AccessToken(msgspec.Struct, kw_only=True):
    """A short-lived sluice access token, used as the bearer credential."""

    access_token: str
    issued_token_type: str
    token_type: Literal["Bearer"]
    expires_in: int
    scope: str | UnsetType = UNSET


class Model(msgspec.Struct):
    """One model the caller may use."""

    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(msgspec.Struct):
    """``GET /v1/models``."""

    object: Literal["list"]
    data: list[Model]


class Health(msgspec.Struct):
    """Liveness."""

    status: Literal["ok"]


class Readiness(msgspec.Struct):
    """Readiness: 200 when ready, 503 (with the same body) when not; ``status`` says which, the rest why."""

    status: str
    store: str
    identity: str
    usage_spilled: int


class AnthropicErrorDetail(msgspec.Struct):
    """What went wrong, by Anthropic's error type (``invalid_request_error``, ``authentication_error``...)."""

    type: str
    message: str


class AnthropicError(msgspec.Struct):
    """Anthropic's error shape: every error of the Messages routes, before an answer or as a stream's ``error`` event."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class InputTokens(msgspec.Struct):
    """``POST /v1/messages/count_tokens``."""

    input_tokens: int


class KeySet(msgspec.Struct):
    """The public keys that verify sluice access tokens (RFC 7517)."""

    keys: list[dict[str, Any]]


class JsonRpcErrorDetail(msgspec.Struct):
    """A JSON-RPC error: its code, a message, and ``data.code`` naming sluice's reason (as the envelope's ``code``)."""

    code: int
    message: str
    data: dict[str, Any]


class JsonRpcError(msgspec.Struct):
    """Every error of the MCP routes, HTTP-level ones included (401 with ``WWW-Authenticate``, 404 session)."""

    jsonrpc: Literal["2.0"]
    id: int | str | None
    error: JsonRpcErrorDetail


class JsonRpcMessage(msgspec.Struct, kw_only=True):
    """One JSON-RPC 2.0 message of the Model Context Protocol (a batch array is refused)."""

    jsonrpc: Literal["2.0"]
    id: int | str | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: dict[str, Any] | UnsetType = UNSET


# Why each status is given; every one of them carries the OpenAI error envelope.
_WHY = {
    202: "A notification or response was taken (no body).",
    400: "The body is not valid JSON or breaks the schema; a guardrail, the token cap or the context window refused it.",
    401: "No credential, or one that is unknown, expired or revoked (or a control-plane key).",
    403: "The identity may not call models (it has no invoker role).",
    404: "No such model for this caller (unknown and out of scope look the same), no such approval, or no such"
         " stored response of the caller's (another identity's looks the same).",
    405: "The gateway offers no server-to-client MCP stream (mcp.streams set to 0).",
    406: "The request's Accept does not allow the media type this route answers in.",
    409: "The approval is pending, denied, already used, or for other arguments.",
    410: "The approval has expired.",
    413: "The body is larger than the listener accepts, or a guardrail's size limit.",
    415: "The body is not sent as the media type the endpoint reads.",
    429: "A rate, token, concurrency or budget limit, or too many failed authentications; see Retry-After.",
    502: "The upstream failed, refused the gateway's credentials, or cut its answer.",
    503: "No upstream is available, the fair queue's deadline passed, or credentials cannot be confirmed.",
    504: "The upstream did not answer in time.",
    529: "Anthropic's overloaded: no upstream is available, the fair queue's deadline passed, or credentials cannot"
         " be confirmed (sluice's 503 on the other routes).",
}
_AUTH = (401, 403, 429, 503)  # every authenticated route: the credential, the role, the failure gate, the store
_MODEL_CALL = (*_AUTH, 400, 404, 413, 415, 502, 504)
_MESSAGES_CALL = (400, 401, 403, 404, 413, 415, 429, 502, 504, 529)  # Anthropic's: 503 answers 529


class Operation(NamedTuple):
    """What the document says of one route: its answers, its body, and whether it needs a credential."""

    id: str
    summary: str
    ok: dict[str, Any]  # media type of a success -> a struct type or an inline schema
    errors: tuple[int, ...] = _AUTH
    body: type | None = None
    body_media: tuple[str, ...] = (JSON_TYPE,)
    public: bool = False
    answers: tuple[int, ...] = (200,)  # the statuses that carry ``ok`` rather than the error envelope
    error: type = ErrorEnvelope  # the errors' shape: OpenAI's, or Anthropic's on its routes


# One server-sent event (schemathesis reads an event stream's schema per event, as OpenAPI 3.2's itemSchema):
# a chunk, the error envelope when the stream fails after its first byte, or the closing [DONE].
_EVENT = {
    "type": "object", "required": ["data"],
    "description": "Sent when the request asks `stream: true`: each event's data is a chat.completion.chunk as the "
                   "upstream writes it, or the error envelope if the stream fails after its first byte; then [DONE].",
    "properties": {"data": {"anyOf": [{"const": "[DONE]"}, {"type": "string", "contentMediaType": JSON_TYPE,
                                                            "contentSchema": _OBJECT}]}},
}
_MCP_EVENT = {"type": "object", "required": ["data"],
              "description": "One JSON-RPC message: the answer to a POST, or a notification on the GET stream.",
              "properties": {"data": {"type": "string", "contentMediaType": JSON_TYPE, "contentSchema": _OBJECT}}}
_TEXT_EVENT = {**_EVENT, "description": "Sent when the request asks `stream: true`: each event's data is a "
               "text_completion chunk as the upstream writes it, or the error envelope if the stream fails after its "
               "first byte; then [DONE]."}
# Anthropic's stream: named events (message_start, content_block_*, message_delta, message_stop, ping, error).
_MESSAGE_EVENT = {
    "type": "object", "required": ["data"],
    "description": "Sent when the request asks `stream: true`: Anthropic's events, each a JSON object named by its "
                   "`event:` line; a failure after the first byte is an `error` event in Anthropic's error shape.",
    "properties": {"event": {"type": "string"},
                   "data": {"type": "string", "contentMediaType": JSON_TYPE, "contentSchema": _OBJECT}},
}
# The Responses API's stream: named events, each carrying its type and a sequence_number.
_RESPONSE_EVENT = {
    "type": "object", "required": ["data"],
    "description": "Sent when the request asks `stream: true`: the Responses API's events (response.created ... "
                   "response.completed), each a JSON object named by its `event:` line; a failure after the first byte "
                   "is a `response.failed` event.",
    "properties": {"event": {"type": "string"},
                   "data": {"type": "string", "contentMediaType": JSON_TYPE, "contentSchema": _OBJECT}},
}
_STORED = (*_AUTH, 404)  # a stored response: the caller's own, or the 404 of an unknown id
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/v1/chat/completions"): Operation(
        "createChatCompletion", "A chat completion, whole or streamed.",
        {JSON_TYPE: {**_OBJECT, "description": "A chat completion as the upstream answers it, minimised."},
         SSE_TYPE: _EVENT}, _MODEL_CALL, ChatCompletionRequest),
    ("POST", "/v1/completions"): Operation(
        "createCompletion", "A legacy text completion, whole or streamed.",
        {JSON_TYPE: {**_OBJECT, "description": "A text_completion as the upstream answers it, minimised."},
         SSE_TYPE: _TEXT_EVENT}, _MODEL_CALL, CompletionRequest),
    ("POST", "/v1/embeddings"): Operation(
        "createEmbedding", "Embeddings of the input.",
        {JSON_TYPE: {**_OBJECT, "description": "The embeddings as the upstream answers them."}},
        _MODEL_CALL, EmbeddingRequest),
    ("POST", "/v1/messages"): Operation(
        "createMessage", "Anthropic's Messages API, whole or streamed, run as a chat completion.",
        {JSON_TYPE: {**_OBJECT, "description": "A message in Anthropic's shape."}, SSE_TYPE: _MESSAGE_EVENT},
        _MESSAGES_CALL, MessagesRequest, error=AnthropicError),
    ("POST", "/v1/messages/count_tokens"): Operation(
        "countMessageTokens", "The input tokens a Messages request would take; nothing is sent upstream.",
        {JSON_TYPE: InputTokens}, (400, 401, 403, 404, 413, 415, 429, 529), CountTokensRequest, error=AnthropicError),
    ("POST", "/v1/responses"): Operation(
        "createResponse", "OpenAI's Responses API, whole or streamed, run as a chat completion; kept when `store`.",
        {JSON_TYPE: {**_OBJECT, "description": "A Response object."}, SSE_TYPE: _RESPONSE_EVENT},
        _MODEL_CALL, ResponsesRequest),
    ("GET", "/v1/responses/{response_id}"): Operation(
        "getResponse", "A stored response of the caller's.", {JSON_TYPE: {**_OBJECT, "description": "A Response object."}},
        _STORED),
    ("DELETE", "/v1/responses/{response_id}"): Operation(
        "deleteResponse", "Delete a stored response of the caller's.", {JSON_TYPE: _OBJECT}, _STORED),
    ("GET", "/v1/responses/{response_id}/input_items"): Operation(
        "listInputItems", "The input items of a stored response of the caller's (`limit`, `order`, `after`).",
        {JSON_TYPE: _OBJECT}, (*_STORED, 400)),
    ("POST", "/v1/files"): Operation(
        "createFile", "Upload a batch input file (multipart: `purpose=batch`, `file`: JSONL, at most 200 MB).",
        {JSON_TYPE: _OBJECT}, (*_AUTH, 400, 413, 415)),
    ("GET", "/v1/files"): Operation("listFiles", "The caller's files (`limit`, `after`, `purpose`).",
                                    {JSON_TYPE: _OBJECT}, (*_AUTH, 400)),
    ("GET", "/v1/files/{file_id}"): Operation("retrieveFile", "A file of the caller's.", {JSON_TYPE: _OBJECT}, _STORED),
    ("DELETE", "/v1/files/{file_id}"): Operation("deleteFile", "Delete a file of the caller's.", {JSON_TYPE: _OBJECT},
                                                 _STORED),
    ("GET", "/v1/files/{file_id}/content"): Operation(
        "downloadFile", "The bytes of a file of the caller's.", {"application/octet-stream": {"type": "string"}},
        _STORED),
    ("POST", "/v1/batches"): Operation(
        "createBatch", "Run an uploaded file's lines through the gateway as the caller, within 24 h.",
        {JSON_TYPE: _OBJECT}, (*_AUTH, 400, 404, 413, 415), CreateBatch),
    ("GET", "/v1/batches"): Operation("listBatches", "The caller's batches (`limit`, `after`).", {JSON_TYPE: _OBJECT},
                                      (*_AUTH, 400)),
    ("GET", "/v1/batches/{batch_id}"): Operation("retrieveBatch", "A batch of the caller's.", {JSON_TYPE: _OBJECT},
                                                 _STORED),
    ("POST", "/v1/batches/{batch_id}/cancel"): Operation(
        "cancelBatch", "Stop a batch of the caller's from starting new lines.", {JSON_TYPE: _OBJECT}, _STORED),
    ("GET", "/v1/models"): Operation("listModels", "The models the caller may use.", {JSON_TYPE: ModelList}),
    ("POST", "/v1/token"): Operation(
        "exchangeToken", "Token exchange (RFC 8693); the credential is in the body.", {JSON_TYPE: AccessToken},
        (400, 401, 413, 415, 429), TokenRequest, (_FORM, JSON_TYPE), public=True),
    ("GET", "/.well-known/jwks.json"): Operation(
        "jwks", "The public keys of sluice access tokens.", {JSON_TYPE: KeySet}, (), public=True),
    ("GET", "/healthz"): Operation("healthz", "Liveness.", {JSON_TYPE: Health}, (), public=True),
    ("GET", "/health"): Operation("health", "Liveness, where vLLM-family tools look for it.", {JSON_TYPE: Health},
                                  (), public=True),
    ("GET", "/readyz"): Operation("readyz", "Readiness (503, same body, when not ready).", {JSON_TYPE: Readiness},
                                  (), answers=(200, 503), public=True),
    ("GET", "/v1/tool-approvals/{approval_id}"): Operation(
        "getToolApproval", "The decision on a held tool call of the caller's.", {JSON_TYPE: _OBJECT}, (*_AUTH, 404)),
    ("POST", "/v1/tool-approvals/{approval_id}/redeem"): Operation(
        "redeemToolApproval", "Release an approved call once, for exactly the approved arguments.",
        {JSON_TYPE: _OBJECT}, (*_AUTH, 400, 404, 409, 410, 413), RedeemRequest),
    ("GET", PATH): Operation("openapi", "This document.", {JSON_TYPE: _OBJECT}),
    ("POST", "/mcp/{server}"): Operation(
        "mcpMessage", "One MCP JSON-RPC message over Streamable HTTP (`Mcp-Session-Id` after initialize); a JSON-RPC "
        "result or error (200: JSON, or one SSE event when `Accept` prefers `text/event-stream`), or 202 for a "
        "notification.", {JSON_TYPE: _OBJECT, SSE_TYPE: _MCP_EVENT}, (*_AUTH, 400, 404),
        JsonRpcMessage, error=JsonRpcError, answers=(200, 202)),
    ("GET", "/mcp/{server}"): Operation(
        "mcpStream", "The session's server-to-client stream (`Mcp-Session-Id`, `Accept: text/event-stream`): "
        "list_changed notifications and keep-alive comments.", {SSE_TYPE: _MCP_EVENT},
        (*_AUTH, 400, 404, 405, 406), error=JsonRpcError),
    ("DELETE", "/mcp/{server}"): Operation(
        "mcpEndSession", "End the MCP session named by `Mcp-Session-Id`.", {JSON_TYPE: _OBJECT}, (*_AUTH, 400, 404),
        error=JsonRpcError),
    ("GET", "/.well-known/oauth-protected-resource/mcp/{server}"): Operation(
        "mcpResourceMetadata", "RFC 9728 protected-resource metadata of an MCP endpoint.", {JSON_TYPE: _OBJECT}, (404,),
        public=True),
    ("POST", "/mcp"): Operation(
        "mcpFederatedMessage", "As `POST /mcp/{server}`, with every configured server behind one endpoint: tools are "
        "listed together and routed by their `server__tool` names.", {JSON_TYPE: _OBJECT, SSE_TYPE: _MCP_EVENT},
        (*_AUTH, 400, 404, 503), JsonRpcMessage, error=JsonRpcError, answers=(200, 202)),
    ("GET", "/mcp"): Operation(
        "mcpFederatedStream", "As `GET /mcp/{server}`, for a `/mcp` session: every server's list_changed.",
        {SSE_TYPE: _MCP_EVENT}, (*_AUTH, 400, 404, 405, 406), error=JsonRpcError),
    ("DELETE", "/mcp"): Operation(
        "mcpFederatedEndSession", "End the `/mcp` session named by `Mcp-Session-Id`, on every replica.",
        {JSON_TYPE: _OBJECT}, (*_AUTH, 400, 404, 503), error=JsonRpcError),
    ("GET", "/.well-known/oauth-protected-resource/mcp"): Operation(
        "mcpFederatedResourceMetadata", "RFC 9728 protected-resource metadata of the federated MCP endpoint `/mcp`.",
        {JSON_TYPE: _OBJECT}, (), public=True),
    ("GET", "/.well-known/oauth-authorization-server"): Operation(
        "authorizationServerMetadata", "RFC 8414 metadata: sluice's token endpoint (token exchange).",
        {JSON_TYPE: _OBJECT}, (), public=True),
}


def _phrase(status: int) -> str:
    return "Overloaded" if status == 529 else HTTPStatus(status).phrase


def document(routes: Iterable[tuple[str, str, object]]) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the given ``(method, path, handler)`` table; a route unknown here raises."""
    served: list[tuple[str, str, Operation]] = []
    for method, path, _ in routes:
        op = OPERATIONS.get((method, path))
        if op is None:
            raise LookupError(f"{method} {path} has no entry in the data plane's OpenAPI (sluice/pipeline/openapi.py)")
        served.append((method, path, op))
    types = {op.error for *_, op in served} | {t for *_, op in served for t in (op.body, *op.ok.values())
                                                   if isinstance(t, type)}
    ordered = sorted(types, key=lambda t: t.__name__)
    refs, components = msgspec.json.schema_components(ordered, ref_template=_REF)
    if "TokenRequest" in components:  # the token endpoint reads any further field, as a string (RFC 8693 has more)
        components["TokenRequest"]["additionalProperties"] = {"type": "string"}
    schema = dict(zip(ordered, refs))
    paths: dict[str, dict[str, Any]] = {}
    for method, path, op in served:
        ok = {media: {"schema": schema[t] if isinstance(t, type) else t} for media, t in op.ok.items()}
        responses = {str(status): {"description": HTTPStatus(status).phrase, **({"content": ok} if status != 202 else {})}
                     for status in op.answers}  # 202: taken, no body (an MCP notification)
        for status in sorted(op.errors):
            responses[str(status)] = {"description": f"{_phrase(status)}. {_WHY[status]}",
                                      "content": {JSON_TYPE: {"schema": schema[op.error]}}}
        entry: dict[str, Any] = {
            "operationId": op.id, "summary": op.summary, "responses": responses,
            "parameters": [{"name": name.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
                           for name in path.split("/") if name.startswith("{")],
        }
        if op.public:
            entry["security"] = []
        if op.body is not None:
            entry["requestBody"] = {"required": True, "content": {m: {"schema": schema[op.body]} for m in op.body_media}}
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {"title": "sluice data plane", "version": "1",
                 "description": "OpenAI-compatible model calls behind sluice's identities, limits and guardrails."},
        "paths": paths,
        "security": [{"bearer": []}],
        "components": {"schemas": components, "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "A data-plane key (slk_...) or an access token from POST /v1/token."}}},
    }


class OpenApiEndpoint:
    """``GET /v1/openapi.json``: the document of the listener's routes (and its own), to any data-plane caller."""

    __slots__ = ("_authenticate", "_body", "route")

    def __init__(self, authenticate: Stage, routes: Iterable[tuple[str, str, object]]) -> None:
        self._authenticate = authenticate
        self.route: tuple[str, str, OpenApiEndpoint] = ("GET", PATH, self)
        self._body = msgspec.json.encode(document([*routes, self.route]))  # once: the routes are fixed at start

    async def __call__(self, exchange: Exchange) -> Reply:
        self._authenticate(RequestContext(exchange, "openapi"))
        return Reply(200, self._body)
