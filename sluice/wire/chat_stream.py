"""What the two re-encoders of a chat stream (``anthropic.StreamEncoder``, ``responses.StreamEncoder``)
do alike: read the data of each SSE event, number the tool calls of the chat deltas, and end a stream
that the upstream closed. Each re-encoder owns its grammar: how a part of the answer (a Messages
content block, a Responses output item) opens, carries its pieces and closes, and how the stream ends
or fails.

A tool call of a chat stream is one part of the answer: its first delta opens it, the next ones add
argument pieces. The call a delta belongs to is its ``index``; a delta without one belongs to the
open call, unless it carries an ``id`` (a new call). A call that comes back after another one opened
(parallel calls' arguments interleaved) cannot be written as one part, and fails the stream.
"""

from __future__ import annotations

from sluice.core.errors import GatewayError, UpstreamError

from .chat import ToolCall, Usage

DONE = b"[DONE]"


class ChatStreamEncoder:
    """Chat SSE bytes in, another API's SSE bytes out: the state and steps both grammars share.

    A subclass writes its grammar: ``feed``, ``_close_part`` (stop the open part; False when the
    stream failed instead), ``_open_call`` (a tool call's part, its key already taken),
    ``_arguments`` (write the event of one argument piece), ``_fail`` and ``_end``.
    """

    __slots__ = ("_buf", "_started", "_ended", "_open", "_pieces", "_tool_key", "_tools_seen", "_finish", "_usage",
                 "_out")

    _CALL = ""  # the kind of the part a tool call is

    def __init__(self) -> None:
        self._buf = b""
        self._started = self._ended = False
        self._open: str | None = None  # the kind of the open part, if any
        self._pieces: list[str] = []  # the open part's pieces (a call's arguments)
        self._tool_key: int | None = None  # the chat tool-call index the open call is
        self._tools_seen: set[int] = set()
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._out: list[bytes] = []

    def feed(self, data: bytes) -> bytes:
        raise NotImplementedError

    def close(self) -> bytes:
        """The upstream stream ended: the tail, or the failure of a stream that ended before the reply did."""
        if self._ended:
            return b""
        if self._buf.strip():
            self._out.append(self.feed(b"\n\n"))  # a last event without its blank line
        if not self._ended:
            if self._finish is None:
                self._fail(UpstreamError("The upstream stream ended before the reply was complete."))
            else:
                self._end()
        return self._flush()

    def _flush(self) -> bytes:
        got = b"".join(self._out)
        self._out.clear()
        return got

    def _tool(self, call: ToolCall) -> bool:
        """One tool-call delta (see the module docstring); False when it failed the stream."""
        key = call.index if call.index is not None else (self._tool_key if call.id is None else len(self._tools_seen))
        if key is None:
            key = 0
        if self._open != self._CALL or key != self._tool_key:
            if key in self._tools_seen:
                self._fail(UpstreamError("The upstream interleaved the arguments of parallel tool calls."))
                return False
            if not self._close_part():
                return False
            self._tools_seen.add(key)
            self._tool_key = key
            self._open_call(call)
        args = call.function.arguments if call.function is not None else None
        if args:
            self._pieces.append(args)
            self._arguments(args)
        return True

    def _close_part(self) -> bool:
        raise NotImplementedError

    def _open_call(self, call: ToolCall) -> None:
        raise NotImplementedError

    def _arguments(self, piece: str) -> None:
        raise NotImplementedError

    def _fail(self, exc: GatewayError) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError


def sse_data(raw: bytes) -> bytes | None:
    """The ``data`` of one SSE event (its data lines joined), or None for a comment or an empty event."""
    if raw.startswith(b"data: ") and b"\n" not in raw:  # the usual event: one data line
        return raw[6:]
    lines = [line[5:].lstrip(b" ") if line.startswith(b"data:") else None for line in raw.split(b"\n")]
    data = [d for d in lines if d is not None]
    return b"\n".join(data) if data else None
