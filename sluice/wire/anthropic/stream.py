"""A chat-completions stream re-encoded, event by event, in Anthropic's stream grammar:

    message_start
    (content_block_start content_block_delta* content_block_stop)*   indices 0, 1, 2...
    message_delta                                                    stop_reason, usage
    message_stop

with ``ping`` allowed anywhere after ``message_start``, and an ``error`` event ending the stream
when the upstream fails or is cut. A text run is one ``text`` block of ``text_delta`` events; a
tool call is one ``tool_use`` block whose ``input_json_delta`` pieces concatenate to its whole
arguments. Usage arrives only at the end of a chat stream, so ``message_start`` carries the
input tokens the caller estimated and ``message_delta`` the upstream's real counts (the SDK takes
the later values). Assembled, the events give what ``encode.encode_message`` gives for the whole reply.

The chat form of an Anthropic upstream's stream (``native``) carries more, and the encoder given its
``NativeAnswer`` reads it while the answer is one (a chat upstream's stream gets none of it): the thinking blocks' own events, passed through with their block renumbered
(a tool call after one starts the chat tool indices again: the guard settled the calls before it),
``ping`` chunks, and the upstream's stop reason and sequence.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluice.core.errors import GatewayError, UpstreamError
from sluice.core.ids import unique_id

from ..chat import Completion, ErrorInfo, ToolCall, completion_decoder
from ..chat_stream import DONE, ChatStreamEncoder, sse_data
from .encode import message_id, stop_reason, tool_id, tool_input, usage
from .errors import error_event
from .native import NativeAnswer, reindexed
from .text_run import TextRun

_json = msgspec.json.encode
PING = b'event: ping\ndata: {"type":"ping"}\n\n'


def ping() -> bytes:
    """A keepalive event (``ping``), valid anywhere after ``message_start``."""
    return PING


def event(name: str, payload: dict[str, Any]) -> bytes:
    """One Anthropic SSE event."""
    return b"event: " + name.encode() + b"\ndata: " + _json(payload) + b"\n\n"


class StreamEncoder(ChatStreamEncoder):
    """Chat SSE bytes in (split anywhere), Anthropic SSE bytes out.

    ``feed`` takes what the upstream sent and returns the events it completes (maybe none);
    ``close`` says the upstream is done, and ends the stream (an ``error`` event if it was cut);
    ``fail`` ends it with an error of the gateway's. Nothing is returned after the end.
    """

    __slots__ = ("model", "input_tokens", "_id", "_index", "_stop", "_run", "_native")
    _CALL = "tool_use"

    def __init__(self, model: str, *, input_tokens: int = 0, message_id: str | None = None,
                 native: NativeAnswer | None = None, text_runs: bool = True) -> None:
        super().__init__()  # its _open: "text" | "tool_use" | "native" (a passed-through block) | None
        self._native = native  # a request that may be answered by an Anthropic upstream (see the module docstring)
        self.model = model
        self.input_tokens = input_tokens
        self._id = message_id
        self._index = -1  # the current block's index
        self._stop: str | int | None = None
        # the fast path for runs of plain text chunks (text_run.py); off: event by event, the reference
        self._run = TextRun() if text_runs else None

    @property
    def ended(self) -> bool:
        """Whether ``message_stop`` or an ``error`` event has been sent."""
        return self._ended

    def start(self) -> bytes:
        """``message_start``, if not sent yet (send it early to ping while the first token is pending)."""
        if self._started:
            return b""
        self._started = True
        if self._id is None:
            self._id = unique_id("msg")
        message = {"id": self._id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": self.input_tokens, "output_tokens": 0,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}}
        return event("message_start", {"type": "message_start", "message": message})

    def feed(self, data: bytes) -> bytes:
        """The Anthropic events completed by these bytes of the chat stream."""
        if self._ended:
            return b""
        buf = self._buf + data if self._buf else data
        if buf.find(b"\r") >= 0:  # not `in`: CPython tries the needle as an int first
            buf = buf.replace(b"\r\n", b"\n")
        out = self._out
        run = self._run
        at = 0
        while not self._ended:
            if self._open == "text" and run is not None and run.prefix and buf.startswith(run.prefix, at):
                got = run.convert(buf[at:] if at else buf, self._index)  # a run of plain text chunks, in bulk
                if got is not None:
                    fast, buf = got
                    out.append(fast)
                    at = 0
                    continue
            end = buf.find(b"\n\n", at)
            if end < 0:
                break
            raw, at = buf[at:end], end + 2
            if raw.startswith(b"event: content_block_") and self._native is not None and self._native.active:
                self._passed(raw)
                continue
            payload = sse_data(raw)
            if payload is None:
                continue
            if payload == DONE:
                self._end()
                continue
            try:
                chunk = completion_decoder.decode(payload)
            except (msgspec.DecodeError, msgspec.ValidationError):
                self._fail(UpstreamError("The upstream sent an event that is not a chat completion chunk."))
                continue
            self._chunk(chunk)
            if self._open == "text" and run is not None and not run.prefix:
                run.learn(raw + b"\n\n", chunk)
        self._buf = buf[at:] if not self._ended else b""
        got = b"".join(out)
        out.clear()
        return got

    def fail(self, exc: GatewayError) -> bytes:
        """End the stream with the gateway's error (a guardrail stop, a timeout) as an ``error`` event."""
        if self._ended:
            return b""
        self._fail(exc)
        return self._flush()

    # ---- the state machine ----------------------------------------------------------------

    def _chunk(self, chunk: Completion) -> None:
        if chunk.error is not None:
            self._fail(_upstream_error(chunk.error))
            return
        if not self._started:
            if self._id is None and chunk.id:
                self._id = message_id(chunk.id)
            self._out.append(self.start())
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.object == "ping" and self._native is not None and self._native.active:
            self._out.append(PING)
            return
        for choice in chunk.choices:
            if choice.index != 0:  # Messages has one reply; other choices are not asked for
                continue
            delta = choice.delta
            if delta is not None:
                if delta.content and not self._text(delta.content):
                    return
                for call in delta.tool_calls or ():
                    if not self._tool(call):
                        return
            if choice.finish_reason is not None:
                if not self._close_part():
                    return
                self._finish, self._stop = choice.finish_reason, choice.stop_reason

    def _text(self, text: str) -> bool:
        if self._open != "text":
            if not self._close_part():
                return False
            self._open_block("text", {"type": "text", "text": ""})
        self._out.append(event("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                       "delta": {"type": "text_delta", "text": text}}))
        return True

    def _open_call(self, call: ToolCall) -> None:
        fn = call.function
        self._open_block("tool_use", {"type": "tool_use", "id": call.id or tool_id(len(self._tools_seen) - 1),
                                      "name": (fn.name if fn else None) or "", "input": {}})

    def _arguments(self, piece: str) -> None:
        self._out.append(event("content_block_delta", {"type": "content_block_delta", "index": self._index,
                                                       "delta": {"type": "input_json_delta", "partial_json": piece}}))

    def _passed(self, raw: bytes) -> None:
        """An event of a block passed through as the upstream sent it, in its place in the numbering."""
        name, _, data = raw[len(b"event: "):].partition(b"\ndata: ")
        if not self._started:
            self._out.append(self.start())
        if name == b"content_block_start":
            if not self._close_part():
                return
            self._index += 1
            self._open = "native"
        elif self._open != "native":  # a delta or stop of no block passed through: nothing to attach it to
            return
        elif name == b"content_block_stop":
            self._open = None
            self._tools_seen.clear()  # the calls after this block are numbered from 0 again (see the docstring)
            self._tool_key = None
        self._out.append(b"event: " + name + b"\ndata: " + reindexed(data, self._index) + b"\n\n")

    def _open_block(self, kind: str, block: dict[str, Any]) -> None:
        self._index += 1
        self._open = kind
        self._out.append(event("content_block_start", {"type": "content_block_start", "index": self._index,
                                                       "content_block": block}))

    def _close_part(self) -> bool:
        """Stop the open block; a tool block's arguments must make a JSON object, or the stream fails."""
        if self._open is None:
            return True
        if self._open == "native":  # the upstream never stopped it: stop it here, so the grammar holds
            self._tools_seen.clear()
            self._tool_key = None
        elif self._open == "tool_use":
            try:
                tool_input("".join(self._pieces))
            except UpstreamError as exc:
                self._fail(exc)
                return False
            self._pieces = []
        self._open = None
        self._out.append(event("content_block_stop", {"type": "content_block_stop", "index": self._index}))
        return True

    def _end(self) -> None:
        if not self._started:
            self._out.append(self.start())
        if not self._close_part():
            return
        native = self._native.stop(self._finish) if self._native is not None else None
        reason, sequence = native if native is not None else stop_reason(self._finish, self._stop)
        final = usage(self._usage) if self._usage is not None else {"output_tokens": 0}
        self._out.append(event("message_delta", {"type": "message_delta",
                                                 "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                                 "usage": final}))
        self._out.append(event("message_stop", {"type": "message_stop"}))
        self._ended = True

    def _fail(self, exc: GatewayError) -> None:
        self._out.append(error_event(exc))
        self._ended = True


def _upstream_error(info: ErrorInfo) -> GatewayError:
    """A chat error event as the gateway's error: its status from the code when it is one, else a 502."""
    status = info.code if isinstance(info.code, int) and 400 <= info.code <= 599 else 502
    return GatewayError(info.message or "The upstream failed mid-stream.", status=status)
