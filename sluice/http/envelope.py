"""The OpenAI error envelope as HTTP: status, JSON body, ``Retry-After`` where it applies."""

from __future__ import annotations

import math

from aiohttp import web

from ..core.errors import GatewayError, error_body
from ..core.exchange import JSON_TYPE, Reply

import msgspec

_encode = msgspec.json.encode


def error_reply(exc: GatewayError) -> Reply:
    headers = dict(exc.headers) if exc.headers else None
    if exc.retry_after is not None:
        headers = headers or {}
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    body = exc.rendered if exc.rendered is not None else _encode(error_body(exc))
    return Reply(exc.status, body, JSON_TYPE, headers)


def to_response(reply: Reply, request_id: str) -> web.Response:
    headers = {"Content-Type": reply.content_type, "x-request-id": request_id}
    if reply.headers:
        headers.update(reply.headers)
    return web.Response(status=reply.status, body=reply.body, headers=headers)
