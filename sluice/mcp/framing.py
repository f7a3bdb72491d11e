"""The bytes of MCP's Streamable HTTP transport as sluice's client reads them (``client.py``).

The JSON-RPC messages a server sends, decoded once by msgspec into typed structs (``Reply``); the shape of a
``tools/call`` result, checked before the gateway reads it (``TOOL_RESULT``); SSE events split out of a body
as its bytes arrive (``SseEvents``); and the pooled connection that also reads the two response headers MCP
needs (``McpConnection``).
"""

from __future__ import annotations

import asyncio
from typing import Any, Union

import msgspec

from ..upstream.connection import TooLarge, UpstreamConnection


class ErrorObject(msgspec.Struct):
    code: int
    message: str = ""
    data: Any = None


class Reply(msgspec.Struct):
    """One JSON-RPC message from the server: a response (``result`` or ``error``), a notification or a request."""

    id: Union[int, str, None] = None
    method: Union[str, None] = None
    params: Union[dict[str, Any], None] = None
    result: msgspec.Raw = msgspec.Raw()
    error: Union[ErrorObject, None] = None


REPLY = msgspec.json.Decoder(Reply)
ANY = msgspec.json.Decoder()


# The shape of a tools/call result (MCP's CallToolResult): what the gateway reads of it is checked here.
class _Text(msgspec.Struct, tag="text", tag_field="type"):
    text: str


class _Image(msgspec.Struct, tag="image", tag_field="type"):
    data: str
    mimeType: str


class _Audio(msgspec.Struct, tag="audio", tag_field="type"):
    data: str
    mimeType: str


class _Link(msgspec.Struct, tag="resource_link", tag_field="type"):
    uri: str
    name: str


class _Contents(msgspec.Struct):
    uri: str
    text: Union[str, None] = None
    blob: Union[str, None] = None


class _Embedded(msgspec.Struct, tag="resource", tag_field="type"):
    resource: _Contents


class _ToolResultShape(msgspec.Struct):
    content: list[Union[_Text, _Image, _Audio, _Link, _Embedded]] = []
    structuredContent: Union[dict[str, Any], None] = None
    isError: bool = False


TOOL_RESULT = msgspec.json.Decoder(_ToolResultShape)


class ToolResult:
    """A tool's result as the server sent it (JSON-ready, checked), its size in bytes, and whether it is an error."""

    __slots__ = ("body", "size", "is_error")

    def __init__(self, body: dict[str, Any], size: int, is_error: bool) -> None:
        self.body, self.size, self.is_error = body, size, is_error


class McpConnection(UpstreamConnection):
    """A pooled connection that also reads the response's ``Content-Type`` and ``Mcp-Session-Id``."""

    __slots__ = ("content_type", "session_id")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.content_type = b""
        self.session_id: str | None = None

    def on_header(self, name: bytes, value: bytes) -> None:
        n = name.lower()
        if n == b"content-type":
            self.content_type = value.lower()
        elif n == b"mcp-session-id":
            self.session_id = value.decode("latin-1")
        else:
            super().on_header(name, value)

    def send(self, request: bytes, read_timeout: float, deadline: float) -> None:
        self.content_type = b""
        self.session_id = None
        super().send(request, read_timeout, deadline)


class SseEvents:
    """An SSE body split into events as its bytes arrive: ``feed`` returns the ``data`` of each whole ``message``
    event (other event types, comments, ``id`` and ``retry`` lines are read and dropped)."""

    __slots__ = ("_buf", "_data", "_event", "_max")

    def __init__(self, max_event: int) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event = b""
        self._max = max_event

    def feed(self, piece: bytes) -> list[bytes]:
        buf = self._buf + piece if self._buf else piece
        *lines, rest = buf.split(b"\n")
        if len(rest) > self._max:
            raise TooLarge()
        self._buf = rest
        out = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # the blank line that ends an event
                if self._data and self._event in (b"", b"message"):
                    out.append(b"\n".join(self._data))
                self._data, self._event = [], b""
                continue
            field, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if field == b"data":
                self._data.append(value)
                if sum(map(len, self._data)) > self._max:
                    raise TooLarge()
            elif field == b"event":
                self._event = value
        return out
