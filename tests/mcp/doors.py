"""The test MCP servers' own HTTP doors (``/_add``, ``/_touch``, ``/_describe``, ...), beside MCP: reading a
request's whole body and answering, on raw ASGI."""

from __future__ import annotations


async def read_body(receive) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if not msg.get("more_body"):
            return body


async def reply(send, status: int, body: bytes = b"") -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
