"""A chat-completions stream re-encoded, event by event, in the Responses stream grammar:

    response.created  response.in_progress                       the Response, in_progress, no output
    per output item, at output_index 0, 1, 2...:
      response.output_item.added
        message:   content_part.added  output_text.delta*  output_text.done  content_part.done
        reasoning: content_part.added  reasoning_text.delta*  reasoning_text.done  content_part.done
        function_call: function_call_arguments.delta*  function_call_arguments.done
      response.output_item.done
    response.completed | response.incomplete                    the whole Response, with usage

or ``response.failed`` (status failed, ``error`` {code, message}) once anything goes wrong: the
upstream's error event, a cut stream, a chunk that is not one, arguments that are not a JSON
object, or the gateway's own stop (``fail``). Every event carries ``type`` and a
``sequence_number`` counting from 0. A text run is one message item; each tool call is one
function_call item whose argument deltas concatenate to its arguments. Usage arrives only at the
end of a chat stream; the caller's input estimate stands in if it never does. Assembled, the
events give what ``encode.encode_response`` gives for the whole reply (``response()`` is that).
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluice.core.errors import GatewayError, UpstreamError

from ..chat import Completion, ToolCall, completion_decoder
from ..chat_stream import DONE, ChatStreamEncoder, sse_data
from .encode import (
    INCOMPLETE,
    checked_arguments,
    echo,
    function_call_item,
    message_item,
    output_id,
    output_text,
    reasoning_item,
    response_object,
    usage,
)
from .errors import failure, upstream_error
from .schema import ResponsesRequest

_json = msgspec.json.encode


class StreamEncoder(ChatStreamEncoder):
    """Chat SSE bytes in (split anywhere), Responses SSE bytes out.

    ``start`` sends the opening events; ``feed`` takes what the upstream sent and returns the
    events it completes (maybe none); ``close`` says the upstream is done and ends the stream
    (``response.failed`` if it was cut); ``fail`` ends it with an error of the gateway's.
    Nothing is returned after the end. ``hold_end``: the closing ``response.completed`` (or
    ``.incomplete``) waits for ``release`` (the gateway stores the response first), and ``fail`` may
    still replace it (the store could not take it).
    """

    __slots__ = ("id", "created_at", "input_tokens", "_echo", "_seq", "_items", "_final", "_hold", "_held")
    _CALL = "function_call"

    def __init__(self, *, id: str, request: ResponsesRequest, created_at: int, input_tokens: int = 0,
                 hold_end: bool = False) -> None:
        super().__init__()  # its _open: the open item's type; _pieces: the open item's text or argument pieces
        self.id = id
        self.created_at = created_at
        self.input_tokens = input_tokens
        self._echo = echo(request)
        self._seq = 0
        self._items: list[dict[str, Any]] = []  # the output items, the open one (if any) last
        self._final: dict[str, Any] | None = None
        self._hold = hold_end
        self._held: str | None = None  # the closing event's type, while it is held

    @property
    def ended(self) -> bool:
        """Whether the closing event (completed, incomplete or failed) has been sent, or is held."""
        return self._ended

    @property
    def held(self) -> bool:
        """Whether the reply is complete and its closing event waits for ``release`` (``hold_end``)."""
        return self._held is not None

    def release(self) -> bytes:
        """The held closing event (``response.completed`` or ``.incomplete``); nothing if none is held."""
        if self._held is None:
            return b""
        kind, self._held = self._held, None
        self._emit(kind, {"response": self._final})
        return self._flush()

    def start(self) -> bytes:
        """``response.created`` and ``response.in_progress``, if not sent yet."""
        if not self._started:
            self._begin()
        return self._flush()

    def feed(self, data: bytes) -> bytes:
        """The Responses events completed by these bytes of the chat stream."""
        if self._ended:
            return b""
        buf = self._buf + data if self._buf else data
        if buf.find(b"\r") >= 0:  # not `in`: CPython tries the needle as an int first
            buf = buf.replace(b"\r\n", b"\n")
        *events, self._buf = buf.split(b"\n\n")
        for raw in events:
            if self._ended:
                break
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
        return self._flush()

    def fail(self, exc: GatewayError) -> bytes:
        """End the stream with the gateway's error (a guardrail stop, a timeout) as ``response.failed``
        (in place of a held closing event too)."""
        if self._ended and self._held is None:
            return b""
        self._held = None
        self._fail(exc)
        return self._flush()

    def response(self) -> dict[str, Any]:
        """The Response: final once the stream has ended, else as it stands (in progress)."""
        if self._final is not None:
            return self._final
        return self._snapshot("in_progress", None)

    def output_items(self) -> list[dict[str, Any]]:
        """The output items so far (all of them once the stream has ended)."""
        return [dict(item) for item in self._items]

    # ---- the state machine ----------------------------------------------------------------

    def _emit(self, kind: str, fields: dict[str, Any]) -> None:
        payload = {"type": kind, **fields, "sequence_number": self._seq}
        self._seq += 1
        self._out.append(b"event: " + kind.encode() + b"\ndata: " + _json(payload) + b"\n\n")

    def _snapshot(self, status: str, use: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        return response_object(id=self.id, echoed=self._echo, created_at=self.created_at, status=status,
                               output=self.output_items(), usage=use, **extra)

    def _begin(self) -> None:
        self._started = True
        created = self._snapshot("in_progress", None)
        self._emit("response.created", {"response": created})
        self._emit("response.in_progress", {"response": created})

    def _chunk(self, chunk: Completion) -> None:
        if chunk.error is not None:
            self._fail(upstream_error(chunk.error))
            return
        if not self._started:
            self._begin()
        if chunk.usage is not None:
            self._usage = chunk.usage
        for choice in chunk.choices:
            if choice.index != 0:  # a Response has one reply; other choices are not asked for
                continue
            delta = choice.delta
            if delta is not None:
                thought = delta.thought
                if thought and not self._text("reasoning", thought):
                    return
                if delta.content and not self._text("message", delta.content):
                    return
                for call in delta.tool_calls or ():
                    if not self._tool(call):
                        return
            if choice.finish_reason is not None:
                self._finish = choice.finish_reason
                if not self._close_part():
                    return

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._items[-1]["id"], "output_index": len(self._items) - 1}

    def _open_item(self, kind: str, item: dict[str, Any]) -> None:
        self._items.append(item)
        self._open = kind
        self._pieces = []
        self._emit("response.output_item.added", {"output_index": len(self._items) - 1, "item": dict(item)})

    def _text(self, kind: str, text: str) -> bool:
        if self._open != kind:
            if not self._close_part():
                return False
            index = len(self._items)
            if kind == "message":
                self._open_item(kind, message_item(output_id(self.id, "msg", index), None, "in_progress"))
                part: dict[str, Any] = output_text("")
            else:
                self._open_item(kind, reasoning_item(output_id(self.id, "rs", index), None, "in_progress"))
                part = {"type": "reasoning_text", "text": ""}
            self._emit("response.content_part.added", {**self._where(), "content_index": 0, "part": part})
        self._pieces.append(text)
        name = "response.output_text.delta" if kind == "message" else "response.reasoning_text.delta"
        extra = {"logprobs": []} if kind == "message" else {}
        self._emit(name, {**self._where(), "content_index": 0, "delta": text, **extra})
        return True

    def _open_call(self, call: ToolCall) -> None:
        fn = call.function
        item = function_call_item(output_id(self.id, "fc", len(self._items)),
                                  call.id or f"call_{len(self._tools_seen) - 1}",
                                  (fn.name if fn else None) or "", "", "in_progress")
        self._open_item("function_call", item)

    def _arguments(self, piece: str) -> None:
        self._emit("response.function_call_arguments.delta", {**self._where(), "delta": piece})

    def _close_part(self) -> bool:
        """Finish the open item (``incomplete`` if the reply was cut by a limit); a call's arguments
        must make a JSON object, or the stream fails."""
        kind = self._open
        if kind is None:
            return True
        status = "incomplete" if self._finish in INCOMPLETE else "completed"
        item = self._items[-1]
        whole = "".join(self._pieces)
        where = self._where()
        if kind == "function_call":
            if status == "completed":
                try:
                    args = checked_arguments(whole)
                except UpstreamError as exc:
                    self._fail(exc)
                    return False
                if args != whole:  # no arguments came: "{}" is sent as their one delta
                    self._emit("response.function_call_arguments.delta", {**where, "delta": args})
                whole = args
            self._emit("response.function_call_arguments.done", {**where, "arguments": whole})
            item["arguments"] = whole
        else:
            message = kind == "message"
            part = output_text(whole) if message else {"type": "reasoning_text", "text": whole}
            done = {**where, "content_index": 0, "text": whole, **({"logprobs": []} if message else {})}
            self._emit("response.output_text.done" if message else "response.reasoning_text.done", done)
            self._emit("response.content_part.done", {**where, "content_index": 0, "part": part})
            item["content"] = [part]
        item["status"] = status
        self._open = None
        self._pieces = []
        self._emit("response.output_item.done", {"output_index": where["output_index"], "item": dict(item)})
        return True

    def _end(self) -> None:
        if not self._started:
            self._begin()
        if not self._close_part():
            return
        incomplete = INCOMPLETE.get(self._finish or "stop")
        status = "incomplete" if incomplete else "completed"
        self._final = self._snapshot(status, usage(self._usage, self.input_tokens), incomplete=incomplete)
        if self._hold:
            self._held = f"response.{status}"
        else:
            self._emit(f"response.{status}", {"response": self._final})
        self._ended = True

    def _fail(self, exc: GatewayError) -> None:
        if not self._started:
            self._begin()
        if self._open is not None:  # what the open item had, as it stood
            item = self._items[-1]
            whole = "".join(self._pieces)
            if self._open == "function_call":
                item["arguments"] = whole
            else:
                item["content"] = [output_text(whole) if self._open == "message"
                                   else {"type": "reasoning_text", "text": whole}]
            item["status"] = "incomplete"
            self._open = None
        use = usage(self._usage, self.input_tokens) if self._usage is not None else None
        self._final = self._snapshot("failed", use, error=failure(exc))
        self._emit("response.failed", {"response": self._final})
        self._ended = True
