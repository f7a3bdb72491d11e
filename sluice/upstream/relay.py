"""Server-sent-event relay: forwards an upstream stream event by event as it arrives,
keeping count of what was produced so a cut stream still settles what it used.

Bytes go out as soon as an event is complete; nothing waits for more than the event it
belongs to. The usage chunk that sluice asked for on the caller's behalf is withheld
from callers who did not ask for it.
"""

from __future__ import annotations

import re

import msgspec

from ..core.bytescan import replace, sse_events
from ..core.errors import GatewayError, UpstreamError, error_body
from ..core.wire import TokenUsage, UsageEnvelope

_DONE_END = b"[DONE]\n\n"
# An event is held until its blank line arrives; an upstream that never sends one (a broken proxy,
# a runaway) would otherwise grow that buffer without end. Chat chunks are well under 1 KiB.
MAX_EVENT_BYTES = 4 * 1024 * 1024


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


def _event_too_large() -> UpstreamError:
    return UpstreamError("The upstream sent an event larger than this gateway relays.", code="upstream_event_too_large")


# a "model" member with a string value; JSON escapes are skipped whole, so an escaped quote never ends it
# (the unrolled form: an alternation per character cost three times as much)
_MODEL = re.compile(rb'"model"[ \t\r\n]*:[ \t\r\n]*("[^"\\]*(?:\\.[^"\\]*)*")')


def model_member(block: bytes) -> tuple[int, int, int] | None:
    """Where the first ``"model"`` member with a string value is in a JSON text (or an SSE block): (the key's
    start, the value's opening quote, just past its closing quote), or None.

    A JSON string holds its quotes escaped, so ``"model"`` with both quotes bare is a key or a value, never
    content; a value is not followed by a colon. An OpenAI-shaped reply's first such key is its top-level
    ``model`` (nothing it nests has one).
    """
    at = block.find(b'"model"')  # a plain search first: the regex then only reads the member itself
    while at >= 0:
        m = _MODEL.match(block, at)
        if m is not None:
            return at, m.start(1), m.end(1)
        at = block.find(b'"model"', at + 7)
    return None


def renamed(body: bytes, name: bytes) -> bytes:
    """A whole reply whose ``model`` is ``name`` (a JSON string): the caller's name for the model, not the
    upstream's. One search and, only when the names differ, one copy; never a decode."""
    at = body.find(b'"model"')
    if at < 0 or body.startswith(b":" + name, at + 7):  # none, or the upstream's own: no regex (the usual reply)
        return body
    got = model_member(body)
    if got is None or body[got[1]:got[2]] == name:
        return body
    return body[:got[1]] + name + body[got[2]:]


class SSERelay:
    """Splits upstream bytes into whole events, tracks usage and the end, returns what to forward.

    ``rename`` (a JSON string) replaces the upstream's ``model`` in every event: the member as the first
    event spells it is learnt once, then each block is one ``bytes.replace``; nothing when the names agree.
    """

    __slots__ = ("_buf", "_strip_usage", "events", "done", "usage", "clean", "_legacy", "_rename", "_member")

    def __init__(self, *, strip_usage: bool, rename: bytes | None = None) -> None:
        self._buf = b""
        self._strip_usage = strip_usage
        self._rename = rename
        self._member: tuple[bytes, bytes] | None = None  # (the upstream's member, the caller's)
        self.events = 0
        self.done = False
        self.usage: TokenUsage | None = None
        self.clean = True
        self._legacy: bool | None = None  # a legacy completion's stream: no role chunk, every event a token

    def feed(self, chunk: bytes) -> bytes:
        """Take what just arrived; return the complete events to send on now (maybe empty).

        ``clean`` says afterwards whether the block returned was proved to be nothing but
        one-line ``data:`` events (the caller may then skip its own malformed-event check).
        """
        if chunk.find(b"\r") >= 0:  # not `in`: CPython tries the needle as an int first
            chunk = chunk.replace(b"\r\n", b"\n")
        buf = self._buf + chunk if self._buf else chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            if len(buf) > MAX_EVENT_BYTES:
                raise _event_too_large()
            self._buf = buf
            self.clean = True
            return b""
        end += 2
        if end == len(buf):
            out, self._buf = buf, b""
        else:
            out, self._buf = buf[:end], buf[end:]
            if len(self._buf) > MAX_EVENT_BYTES:
                raise _event_too_large()
        n, self.clean = sse_events(out)  # one-line data events only (the caller may skip its own check)?
        self.events += n
        if not self.done and _ends_stream(out):
            self.done = True
            self.events -= 1
        if self._legacy is None:  # once a stream, from its first event
            self._legacy = b'"text_completion"' in out[:out.find(b"\n\n")]
        at = out.rfind(b'"usage"')  # the usage event is nearly always last: a reverse search is short
        if at >= 0:
            out = self._take_usage(out, at)
        if self._rename is not None:
            out = self._renamed(out)
        return out

    def _renamed(self, out: bytes) -> bytes:
        member = self._member
        if member is None:
            got = model_member(out)
            if got is None:
                return out  # no chunk with a model yet (a comment, a keepalive): look again in the next block
            if out[got[1]:got[2]] == self._rename:
                self._rename = None  # the upstream already answers with the caller's name
                return out
            member = self._member = (out[got[0]:got[2]], out[got[0]:got[1]] + self._rename)  # type: ignore[operator]
        return replace(out, member[0], member[1])

    def _take_usage(self, block: bytes, at: int) -> bytes:
        # From the last mention of "usage" backwards, only the event around each usage object
        # is parsed; the latest object wins, as it would read forwards. Only a caller who did not
        # ask for usage makes the walk go on past it, to cut every usage-only event.
        taken = False
        while at >= 0:
            if _USAGE.match(block, at) is None:  # "usage": null, as OpenAI sends on every chunk
                at = block.rfind(b'"usage"', 0, at)
                continue
            before = block.rfind(b"\n\n", 0, at)
            start = before + 2 if before >= 0 else 0
            end = block.find(b"\n\n", at) + 2
            event = block[start:end - 2]
            got = None
            if event.startswith(b"data:"):
                try:
                    got = _usage.decode(event[5:].strip()).usage
                except msgspec.DecodeError:
                    got = None
            if got is not None:
                if not taken:
                    self.usage, taken = got, True
                if not self._strip_usage:
                    break  # the latest usage is taken and nothing is cut: the rest of the block is not read
                if _EMPTY_CHOICES[0] in event or _EMPTY_CHOICES[1] in event:
                    self.events -= 1
                    block = block[:start] + block[end:]
            at = block.rfind(b'"usage"', 0, start)
        return block

    @property
    def completion_estimate(self) -> int:
        """Content events seen, less a chat stream's role chunk: one token each when the upstream reports none."""
        return self.events if self._legacy else max(self.events - 1, 0)
