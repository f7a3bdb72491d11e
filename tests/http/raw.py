"""Raw-socket helpers for HTTP/1.1 tests: send exact bytes, read what comes back, classify it."""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass

_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


@dataclass
class Outcome:
    """What a server did with some bytes: the statuses it answered, and whether it closed or hung."""

    statuses: list[int]
    raw: bytes
    closed: bool
    hung: bool

    @property
    def safe(self) -> bool:
        """A 4xx (or an answer) or a clean close; never a hang, never a 5xx."""
        return not self.hung and all(s < 500 for s in self.statuses) and (bool(self.statuses) or self.closed)


def exchange(port: int, parts: list[bytes], *, gap: float = 0.0, shut_write: bool = False,
             wait: float = 5.0, expect: int | None = None) -> Outcome:
    """Send ``parts`` (``gap`` seconds apart), then read until the server closes or ``wait`` passes.

    With ``expect``, stop as soon as that many responses have fully arrived (a server
    that keeps the connection alive is then not counted as hanging).
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=wait)
    data = b""
    closed = hung = False
    try:
        for i, part in enumerate(parts):
            if i and gap:
                time.sleep(gap)
            try:
                sock.sendall(part)
            except OSError:
                break  # the server already gave up on us: what did it say?
        if shut_write:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # already reset by the server
        deadline = time.monotonic() + wait
        while True:
            if expect is not None and _complete_responses(data) >= expect:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                hung = True
                break
            sock.settimeout(left)
            try:
                got = sock.recv(65536)
            except socket.timeout:
                hung = True
                break
            except OSError:
                closed = True
                break
            if not got:
                closed = True
                break
            data += got
    finally:
        sock.close()
    return Outcome([int(m.group(1)) for m in _STATUS.finditer(data)], data, closed, hung)


def _complete_responses(data: bytes) -> int:
    """Responses whose whole body (by Content-Length) has arrived."""
    n = pos = 0
    while True:
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            return n
        m = re.search(rb"(?i)content-length: *(\d+)", data[pos:end])
        body = int(m.group(1)) if m else 0
        if len(data) < end + 4 + body:
            return n
        n += 1
        pos = end + 4 + body
