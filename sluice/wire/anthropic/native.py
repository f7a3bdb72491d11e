"""An Anthropic upstream's answer read into the chat form the pipeline governs, and carried back out.

One governance engine. The answer of an ``api: anthropic`` upstream is read here into the chat
completion (whole) or the chat chunks (streamed) that every other upstream's answer already is, so the
rest of the path is the one the translated path runs, unchanged: the SSE relay (a stream is complete
only at Anthropic's ``message_stop``, which becomes the chat stream's ``[DONE]``; a cut stream ends in
an ``error`` event), the output guard (secrets masked across deltas, tool calls held until complete and
judged against the registry, a blocked call leaving nothing of itself, a held one a notice, vendor fields
minimised), settling and accounting, and ``encode_message``/``StreamEncoder`` writing Anthropic's wire
back. A second guard that read Anthropic's grammar would be a second copy of those rules to keep in step.

What the chat form has no place for travels beside it:

- ``thinking`` and ``redacted_thinking`` blocks: in a stream their events pass through the relay and the
  guard as they came, as named SSE events (the guard releases them in order and never reads or rewrites
  them: the signature covers the text); ``StreamEncoder`` gives them their place in the block numbering.
  In a whole reply they wait in ``NativeAnswer`` and are put back where they stood (``restore``).
- the stop reason and stop sequence, in ``NativeAnswer``: the encoders use them when the guard left the
  finish as the upstream gave it (a reply whose every tool call was blocked ends ``end_turn``, as on the
  translated path).
- usage, in the chat usage itself: ``prompt_tokens`` is input + cache reads + cache writes, cache reads
  are ``cached_tokens`` and cache writes sluice's ``cache_creation_tokens``, so they settle, price and
  encode back to Anthropic's four fields exactly.
- ``ping``: a chunk without choices whose ``object`` is ``ping``; the guard keeps it in order without
  releasing the text it holds (an SSE comment would make it flush its window), the encoder writes ``ping``.

Anything else (citations, blocks of server tools a request cannot offer here) is dropped, named in ``dropped``.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from sluice.core.errors import GatewayError, RateLimited, Unavailable, UpstreamError

from ..native import DONE, NativeStream, completion, event_data, tool_call

_json = msgspec.json.encode
PASSTHROUGH = frozenset({"thinking", "redacted_thinking"})  # blocks relayed as they came
# Anthropic's stop reasons as a chat finish; one the chat form has no name for is ``stop`` (restored from NativeAnswer)
FINISH = {"end_turn": "stop", "max_tokens": "length", "stop_sequence": "stop", "tool_use": "tool_calls",
          "refusal": "content_filter"}
PING = b'data: {"object":"ping","choices":[]}\n\n'
_INDEX = re.compile(rb'"index"\s*:\s*\d+')


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Block(msgspec.Struct, gc=False):
    type: str = ""
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None


class _Message(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    content: list[msgspec.Raw] = []
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: _Usage | None = None


class _Delta(msgspec.Struct, gc=False):
    type: str = ""
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None


class _Error(msgspec.Struct, gc=False):
    type: str | None = None
    message: str | None = None


class _Event(msgspec.Struct, gc=False):
    type: str
    index: int | None = None
    message: _Message | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _Error | None = None


_message = msgspec.json.Decoder(_Message).decode
_block = msgspec.json.Decoder(_Block).decode
_event = msgspec.json.Decoder(_Event).decode


class NativeAnswer:
    """What an Anthropic answer carries that its chat form does not; one per request, ``reset`` per attempt."""

    __slots__ = ("active", "stop_reason", "stop_sequence", "finish", "blocks", "dropped")

    def __init__(self) -> None:
        self.reset(False)

    def reset(self, active: bool) -> None:
        """A new attempt: ``active`` when it goes to an Anthropic upstream (else the chat form is all there is)."""
        self.active = active
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.finish: str | None = None  # the chat finish the stop reason was read as
        self.blocks: list[tuple[str | None, bool, msgspec.Raw]] = []  # whole replies: (next call's id, first, block)
        self.dropped: list[str] = []

    def _stopped(self, reason: str | None, sequence: str | None) -> str:
        self.stop_reason, self.stop_sequence = reason, sequence
        self.finish = FINISH.get(reason or "end_turn", "stop")
        return self.finish

    def stop(self, finish: str | None) -> tuple[str, str | None] | None:
        """The upstream's (stop_reason, stop_sequence) if the reply still ends with the finish it was read as."""
        if self.active and self.stop_reason is not None and finish == self.finish:
            return self.stop_reason, self.stop_sequence
        return None

    def restore(self, message: dict[str, Any]) -> dict[str, Any]:
        """A whole reply encoded from the chat form, with what travelled beside it put back."""
        if not self.active:
            return message
        got = self.stop(_finish_of(message["stop_reason"]))
        if got is not None:
            message["stop_reason"], message["stop_sequence"] = got
        if self.blocks:
            content: list[Any] = message["content"]
            for anchor, first, raw in self.blocks:
                if first:  # before anything the reply said: at the front, after the blocks put there already
                    at = next((n for n, b in enumerate(content) if not isinstance(b, msgspec.Raw)), len(content))
                else:  # before the call it preceded; the end when that call did not go
                    at = next((n for n, b in enumerate(content) if isinstance(b, dict) and b.get("type") == "tool_use"
                               and b.get("id") == anchor), len(content))
                content.insert(at, raw)
        return message


def _finish_of(stop_reason: str) -> str | None:
    """The chat finish ``encode_message`` read a stop reason from (the inverse of its table)."""
    return {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls", "refusal": "content_filter",
            "stop_sequence": "stop"}.get(stop_reason)


def _usage(u: _Usage) -> dict[str, Any]:
    """Anthropic's usage as the chat form's (see the module docstring)."""
    read, wrote = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
    return {"prompt_tokens": (u.input_tokens or 0) + read + wrote, "completion_tokens": u.output_tokens or 0,
            "prompt_tokens_details": {"cached_tokens": read, "cache_creation_tokens": wrote}}


def chat_completion(body: bytes, answer: NativeAnswer) -> bytes:
    """A whole Anthropic message as the chat completion the guard and the encoder read."""
    try:
        msg = _message(body)
        heads = [_block(raw) for raw in msg.content]
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError("The upstream returned a reply that is not an Anthropic message.") from None
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    waiting: list[tuple[int, bool, msgspec.Raw]] = []  # (calls before it, first, block)
    for raw, b in zip(msg.content, heads):
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "tool_use":
            calls.append(tool_call(b.id or "", b.name or "", _json(b.input or {}).decode()))
        elif b.type in PASSTHROUGH:
            waiting.append((len(calls), not texts and not calls, raw))
        elif b.type not in answer.dropped:
            answer.dropped.append(b.type)
    answer.blocks = [(calls[k]["id"] if k < len(calls) else None, first, raw) for k, first, raw in waiting]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if calls:
        message["tool_calls"] = calls
    finish = answer._stopped(msg.stop_reason, msg.stop_sequence)
    return completion(msg.id, msg.model, message, finish, _usage(msg.usage) if msg.usage is not None else None)


class ChatEvents(NativeStream):
    """Anthropic's stream in (bytes split anywhere), the chat form's events out.

    ``feed`` returns pieces to relay in order: runs of chat events, and each passed-through event
    alone (the guard reads a block of chat events at once; a passed-through event is never in one).
    ``done`` is set at ``message_stop``: until then the chat stream has no ``[DONE]``.
    """

    __slots__ = ("_answer", "_kinds", "_tools", "_usage", "_spoke")

    def __init__(self, answer: NativeAnswer) -> None:
        super().__init__()
        self._answer = answer
        self._kinds: dict[int, Any] = {}  # block index -> "text" | "pass" | the chat tool index | None (dropped)
        self._tools = 0
        self._usage = _Usage()
        self._spoke = False  # some content has been read: an upstream ping is relayed from here

    def _read(self, raw: bytes) -> None:
        data = event_data(raw)
        if data is None:
            return  # a comment
        try:
            ev = _event(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UpstreamError("The upstream sent an event that is not an Anthropic stream event.",
                                code="upstream_bad_event") from None
        kind = ev.type
        if kind == "content_block_delta":
            self._delta(ev, data)
        elif kind == "content_block_start":
            self._start(ev, data)
        elif kind == "content_block_stop":
            if self._kinds.get(ev.index) == "pass":  # type: ignore[arg-type]
                self._pass(kind, data)
        elif kind == "message_start":
            if ev.message is not None and ev.message.usage is not None:
                self._usage = ev.message.usage
        elif kind == "message_delta":
            self._end(ev)
        elif kind == "message_stop":
            self._run.append(DONE)
            self.done = True
        elif kind == "ping":
            if self._spoke:
                self._run.append(PING)
        elif kind == "error":
            raise _stream_error(ev.error)
        # other event types: Anthropic may add them; a reader ignores what it does not know

    def _start(self, ev: _Event, data: bytes) -> None:
        block, i = ev.content_block, ev.index
        kind = block.type if block is not None else ""
        if kind == "text":
            self._kinds[i] = "text"  # type: ignore[index]
            if block.text:  # type: ignore[union-attr]
                self._text(block.text)  # type: ignore[union-attr]
        elif kind == "tool_use":
            k = self._kinds[i] = self._tools  # type: ignore[index]
            self._tools += 1
            self._spoke = True
            self._open_call(k, block.id or "", block.name or "")  # type: ignore[union-attr]
            if block.input:  # type: ignore[union-attr]  # a whole input at the start (not Anthropic's way, but valid)
                self._arguments(k, _json(block.input).decode())  # type: ignore[union-attr]
        elif kind in PASSTHROUGH:
            self._kinds[i] = "pass"  # type: ignore[index]
            self._pass("content_block_start", data)
        else:
            self._kinds[i] = None  # type: ignore[index]
            if kind not in self._answer.dropped:
                self._answer.dropped.append(kind)

    def _delta(self, ev: _Event, data: bytes) -> None:
        kind, d = self._kinds.get(ev.index), ev.delta  # type: ignore[arg-type]
        if d is None or kind is None:
            return
        if kind == "text":
            if d.type == "text_delta" and d.text:
                self._text(d.text)
        elif kind == "pass":
            self._pass("content_block_delta", data)
        elif d.type == "input_json_delta" and d.partial_json:
            self._arguments(kind, d.partial_json)

    def _end(self, ev: _Event) -> None:
        d = ev.delta
        finish = self._answer._stopped(d.stop_reason if d else None, d.stop_sequence if d else None)
        u = ev.usage
        if u is not None:  # message_delta's counts are cumulative; fields it leaves out keep message_start's
            s = self._usage
            self._usage = _Usage(*(new if new is not None else old for new, old in (
                (u.input_tokens, s.input_tokens), (u.output_tokens, s.output_tokens),
                (u.cache_creation_input_tokens, s.cache_creation_input_tokens),
                (u.cache_read_input_tokens, s.cache_read_input_tokens))))
        self._chunk({}, finish)
        self._usage_chunk(_usage(self._usage))

    def _text(self, text: str) -> None:
        self._spoke = True
        self._chunk({"content": text})

    def _pass(self, name: str, data: bytes) -> None:
        """An event relayed as it came, in a piece of its own."""
        self._spoke = True
        if self._run:
            self._pieces.append(b"".join(self._run))
            self._run.clear()
        self._pieces.append(b"event: " + name.encode() + b"\ndata: " + data + b"\n\n")


def reindexed(data: bytes, index: int) -> bytes:
    """A passed-through event's data with its block ``index`` set (the first ``"index"`` key is the event's:
    a key inside a JSON string would be escaped), every other byte as it came."""
    return _INDEX.sub(b'"index":%d' % index, data, count=1)


def _stream_error(err: _Error | None) -> GatewayError:
    """An ``error`` event of the upstream's as the gateway's error (its message is the upstream's business)."""
    kind = err.type if err is not None else None
    if kind == "overloaded_error":
        return Unavailable("The upstream model server is overloaded; retry later.", code="upstream_overloaded",
                           retry_after=1.0)
    if kind == "rate_limit_error":
        return RateLimited("The upstream model server is rate limiting; retry later.", code="upstream_rate_limited",
                           retry_after=1.0)
    return UpstreamError("The upstream model server failed in the middle of the stream.", code="upstream_stream_error")
