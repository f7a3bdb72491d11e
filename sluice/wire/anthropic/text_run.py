"""The common stretch of a chat stream, text deltas one after another, re-framed in one pass.

Every content chunk of one chat stream is the same bytes around its text: OpenAI and vLLM repeat the
id, object, created and model on each, so a chunk is ``P + "<text>" + S`` with ``P`` and ``S`` fixed.
Once one chunk has been decoded and seen to be exactly that (``learn``), a block of such chunks
becomes Anthropic ``text_delta`` events in one pass over the block (``convert``), not event by event; the
JSON string of the text is carried as it came, escapes and all. Anything else in the block (a role, a
tool call, a finish, usage, a chunk of another shape) sends the caller back to the event-by-event
encoder, which stays the reference.

``convert`` hands the block to ``core.bytescan.reframe``: compiled, it reads each text as a JSON string
(escapes, UTF-8) and stops at the first event that is not ``P`` + one non-empty string + ``S``, ~5 µs for
the yardstick's stream; its pure-Python twin (where the extension is not built) rebuilds the block from
the texts and compares, then decodes the texts once with msgspec. A JSON string holds no raw newline and
no unescaped quote, so nothing a model writes can fool either.
"""

from __future__ import annotations

import msgspec

from ...core.bytescan import reframe
from ..chat import Completion

_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,"delta":{"type":"text_delta","text":'
_END = b"}}\n\n"
_CONTENT = b'"content":'


class _Delta(msgspec.Struct):
    content: msgspec.Raw


class _Choice(msgspec.Struct):
    delta: _Delta


class _Chunk(msgspec.Struct):
    choices: list[_Choice]


_raw = msgspec.json.Decoder(_Chunk)


class TextRun:
    """The fixed bytes around the text of one stream's content chunks, once learned."""

    __slots__ = ("prefix", "suffix", "_index", "_out_prefix")

    def __init__(self) -> None:
        self.prefix = b""  # P: empty until learned
        self.suffix = b""
        self._index = -1
        self._out_prefix = b""

    def learn(self, event: bytes, chunk: Completion) -> None:
        """Take ``P`` and ``S`` from one whole event (``data: ...\\n\\n``) whose decoded ``chunk`` is a
        plain text delta of choice 0 and nothing else; any other event teaches nothing."""
        if self.prefix or chunk.usage is not None or chunk.error is not None or len(chunk.choices) != 1:
            return
        c = chunk.choices[0]
        d = c.delta
        if (c.index != 0 or c.finish_reason is not None or c.stop_reason is not None or d is None or not d.content
                or d.tool_calls or d.role is not None or not event.startswith(b"data: {") or event.count(b"\n\n") != 1):
            return
        at = event.find(_CONTENT)
        if at < 0 or event.find(_CONTENT, at + 1) >= 0:
            return
        at += len(_CONTENT)
        while event[at:at + 1] == b" ":  # json.dumps' way, and some servers': the space belongs to P
            at += 1
        try:
            text = bytes(_raw.decode(event[6:]).choices[0].delta.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if event[at:at + len(text)] != text:
            return
        self.prefix, self.suffix = event[:at], event[at + len(text):]

    def convert(self, block: bytes, index: int) -> tuple[bytes, bytes] | None:
        """(``text_delta`` events of block ``index``, the rest of the block) when the block opens with a
        run of learned text chunks; None when it does not (the caller encodes it event by event)."""
        p = self.prefix
        if not p:  # reframe checks each event's prefix, the first one included
            return None
        if index != self._index:
            self._index, self._out_prefix = index, _DELTA % index
        got = reframe(block, p, self.suffix, self._out_prefix, _END)
        if got is None:
            return None
        return got[0], block[got[1]:] if got[1] != len(block) else b""
