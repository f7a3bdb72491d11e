"""Server-sent-event relay: forwards an upstream stream event by event as it arrives,
keeping count of what was produced so a cut stream still settles what it used.

Bytes go out as soon as an event is complete; nothing waits for more than the event it
belongs to. The usage chunk that sluice asked for on the caller's behalf is withheld
from callers who did not ask for it.
"""

from __future__ import annotations

import re

import msgspec

from ..core.errors import GatewayError, error_body
from ..core.wire import TokenUsage, UsageEnvelope

_DONE_END = b"[DONE]\n\n"


def _ends_stream(block: bytes) -> bool:
    """Whether a block of whole events holds the end event: data exactly ``[DONE]``.

    Only an event boundary counts (the block's start, or after a blank line). Content is
    JSON on one line, so a model that writes "data: [DONE]" never matches here; it did when
    any substring counted. The end is nearly always the block's last event: one probe.
    """
    at = block.rfind(_DONE_END)
    while at >= 0:
        for field in (b"data: ", b"data:"):
            start = at - len(field)
            if start >= 0 and block.startswith(field, start) and (start == 0 or block.startswith(b"\n\n", start - 2)):
                return True
        at = block.rfind(_DONE_END, 0, at)
    return False


_usage = msgspec.json.Decoder(UsageEnvelope)
_EMPTY_CHOICES = (b'"choices":[]', b'"choices": []')
_USAGE = re.compile(rb'"usage": ?\{')


def error_event(exc: GatewayError) -> bytes:
    """An SSE event carrying an OpenAI error body; the SDKs raise it as an APIError."""
    return b"data: " + msgspec.json.encode(error_body(exc)) + b"\n\n"


class SSERelay:
    """Splits upstream bytes into whole events, tracks usage and the end, returns what to forward."""

    __slots__ = ("_buf", "_strip_usage", "events", "done", "usage")

    def __init__(self, *, strip_usage: bool) -> None:
        self._buf = b""
        self._strip_usage = strip_usage
        self.events = 0
        self.done = False
        self.usage: TokenUsage | None = None

    def feed(self, chunk: bytes) -> bytes:
        """Take what just arrived; return the complete events to send on now (maybe empty)."""
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        end += 2
        out, self._buf = buf[:end], buf[end:]
        self.events += out.count(b"\n\n")
        if not self.done and _ends_stream(out):
            self.done = True
            self.events -= 1
        if b'"usage"' in out:
            out = self._take_usage(out)
        return out

    def _take_usage(self, block: bytes) -> bytes:
        # Only the event around each usage object is parsed; splitting the whole block into
        # events cost 12% of the streaming path in the profile.
        pos = 0
        while True:
            hit = _USAGE.search(block, pos)
            if hit is None:
                return block
            before = block.rfind(b"\n\n", 0, hit.start())
            start = before + 2 if before >= 0 else 0
            end = block.find(b"\n\n", hit.end()) + 2
            event = block[start:end - 2]
            got = None
            if event.startswith(b"data:"):
                try:
                    got = _usage.decode(event[5:].strip()).usage
                except msgspec.DecodeError:
                    got = None
            if got is not None:
                self.usage = got
                if self._strip_usage and any(e in event for e in _EMPTY_CHOICES):
                    self.events -= 1
                    block = block[:start] + block[end:]
                    pos = start
                    continue
            pos = end

    @property
    def completion_estimate(self) -> int:
        """Content events seen, less the role chunk: one token each when the upstream reports none."""
        return max(self.events - 1, 0)
