"""HTTP/1.1 bytes for the native server: request headers as a mapping, response heads, chunks.

Everything here runs per request, so the pieces that never change (status lines, the
``Date`` value within one second) are built once.
"""

from __future__ import annotations

import time
from email.utils import formatdate
from http import HTTPStatus

from ..core.exchange import Reply

STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"
CRLF = b"\r\n"


class Headers(dict[str, str]):
    """Request headers keyed by lower-cased name; lookups ignore case as HTTP requires.

    The first occurrence of a repeated header wins, as it does in aiohttp's ``get``.
    """

    __slots__ = ()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return dict.get(self, key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return dict.__getitem__(self, key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and dict.__contains__(self, key.lower())


class _Clock:
    """The ``Date`` header line, rebuilt at most once a second."""

    __slots__ = ("_second", "_line")

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"Date: " + formatdate(now, usegmt=True).encode() + CRLF
        return self._line


date_line = _Clock().line


def _status_line(status: int) -> bytes:
    line = STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % status


def _line(name: str, value: str) -> bytes:
    text = name + ": " + value
    if "\r" in text or "\n" in text:
        # Values come from our own code, never from a caller; a stray CR/LF is still
        # dropped so a mistake cannot split the response.
        text = text.replace("\r", "").replace("\n", "")
    return text.encode("latin-1", "replace") + CRLF


def _extra(headers: dict[str, str] | None) -> bytes:
    if not headers:
        return b""
    return b"".join([_line(k, v) for k, v in headers.items()])


def reply_bytes(reply: Reply, request_id: str, keep_alive: bool, head: bool = False) -> bytes:
    """A complete response: status line, headers and body in one buffer for one write."""
    body = reply.body
    out = [
        _status_line(reply.status),
        b"Content-Type: ", reply.content_type.encode(), CRLF,
        b"Content-Length: %d\r\n" % len(body),
        b"x-request-id: ", request_id.encode(), CRLF,
        date_line(),
        _extra(reply.headers),
        CRLF if keep_alive else b"Connection: close\r\n\r\n",
    ]
    if not head:
        out.append(body)
    return b"".join(out)


def stream_head(status: int, content_type: str, headers: dict[str, str] | None, request_id: str,
                chunked: bool, keep_alive: bool) -> bytes:
    """The head of a response whose body follows piece by piece."""
    return b"".join((
        _status_line(status),
        b"Content-Type: ", content_type.encode(), CRLF,
        b"Transfer-Encoding: chunked\r\n" if chunked else b"",
        b"x-request-id: ", request_id.encode(), CRLF,
        date_line(),
        _extra(headers),
        CRLF if keep_alive else b"Connection: close\r\n\r\n",
    ))


def chunk_size_line(n: int) -> bytes:
    """The size line in front of one chunk of a chunked body."""
    return b"%x\r\n" % n
