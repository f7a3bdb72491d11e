"""An upstream's own Responses answer read into the chat form the pipeline governs.

One governance engine. The answer of an ``api: responses`` upstream (vLLM serves ``/v1/responses``
itself) is read here into the chat completion (whole) or the chat chunks (streamed) that every other
upstream's answer already is, so the rest of the path is the one the translated path runs, unchanged:
the SSE relay (a stream is complete only at ``response.completed`` or ``response.incomplete``, which
become the chat stream's finish, usage and ``[DONE]``; a stream cut before them, an upstream
``response.failed`` or ``error`` event, ends as a cut chat stream does), the output guard (secrets
masked across ``output_text`` deltas, function calls held until complete and judged against the tool
registry, a blocked call leaving nothing of itself, a high-risk one held), settling and accounting, and
``encode_response``/``StreamEncoder`` writing the Responses wire back with the gateway's own ids (the
response the caller chains on is the gateway's, stored by it). A second guard that read the Responses
grammar would be a second copy of those rules to keep in step.

| Responses (the upstream's)                          | chat form                                               |
|-----------------------------------------------------|---------------------------------------------------------|
| ``message`` items: ``output_text`` parts / ``refusal`` parts | ``content`` (concatenated) / ``refusal``      |
| ``function_call`` items                             | ``tool_calls``: ``id`` the ``call_id``, ``name``, ``arguments`` |
| ``reasoning`` items: ``reasoning_text`` content     | ``reasoning_content`` (summaries are not reasoning text: not read) |
| ``status`` completed / incomplete                   | ``finish_reason`` stop or tool_calls / length (``max_output_tokens``) or content_filter |
| ``usage`` input / output / cached / reasoning tokens | ``prompt_tokens`` / ``completion_tokens`` / ``cached_tokens`` / ``reasoning_tokens`` |
| ``status: failed``, ``response.failed``, ``error``  | the gateway's upstream error (its message is the upstream's business) |

Streamed: ``output_text.delta``, ``refusal.delta``, ``reasoning_text.delta`` and
``function_call_arguments.delta`` are the chat deltas of the same names; a call opens at its
``output_item.added`` (chat tool index, ``call_id``, name), its arguments taken whole from
``function_call_arguments.done`` or ``output_item.done`` only when no delta carried them. Other output
items (hosted tools' calls, which a request cannot offer here: they are not sent) and other events are not read.
"""

from __future__ import annotations

from typing import Any

import msgspec

from sluice.core.errors import GatewayError, RateLimited, UpstreamError

from ..native import DONE, NativeStream, completion, event_data, tool_call

INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}  # an incomplete reason as a chat finish


class _Part(msgspec.Struct, gc=False):
    type: str = ""
    text: str | None = None
    refusal: str | None = None


class _Item(msgspec.Struct, gc=False):
    type: str = ""
    content: list[_Part] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None


class _InputDetails(msgspec.Struct, gc=False):
    cached_tokens: int | None = None


class _OutputDetails(msgspec.Struct, gc=False):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int | None = None
    output_tokens: int | None = None
    input_tokens_details: _InputDetails | None = None
    output_tokens_details: _OutputDetails | None = None


class _Reason(msgspec.Struct, gc=False):
    reason: str | None = None


class _Error(msgspec.Struct, gc=False):
    code: Any = None
    message: str | None = None


class _Response(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    status: str | None = None
    output: list[_Item] | None = None
    usage: _Usage | None = None
    incomplete_details: _Reason | None = None
    error: _Error | None = None


class _Ended(msgspec.Struct, gc=False):
    """The Response of a closing event: how it ended (its output came as the events before it)."""

    status: str | None = None
    usage: _Usage | None = None
    incomplete_details: _Reason | None = None
    error: _Error | None = None


class _Event(msgspec.Struct, gc=False):
    type: str
    output_index: int | None = None
    item: _Item | None = None
    delta: Any = None
    arguments: str | None = None
    response: _Ended | None = None
    code: Any = None  # an ``error`` event's
    message: str | None = None


_response = msgspec.json.Decoder(_Response).decode
_event = msgspec.json.Decoder(_Event).decode


def _usage(u: _Usage) -> dict[str, Any]:
    """The Responses usage as the chat form's."""
    cached = u.input_tokens_details.cached_tokens if u.input_tokens_details is not None else None
    reasoning = u.output_tokens_details.reasoning_tokens if u.output_tokens_details is not None else None
    return {"prompt_tokens": u.input_tokens or 0, "completion_tokens": u.output_tokens or 0,
            "prompt_tokens_details": {"cached_tokens": cached or 0},
            "completion_tokens_details": {"reasoning_tokens": reasoning or 0}}


def _finish(resp: _Response | _Ended, calls: int) -> str:
    """The chat finish of a Response that ended (completed or incomplete)."""
    if resp.status == "incomplete":
        reason = resp.incomplete_details.reason if resp.incomplete_details is not None else None
        return INCOMPLETE.get(reason or "", "length")
    return "tool_calls" if calls else "stop"


def failure(err: _Error | None, code: Any = None) -> GatewayError:
    """A failed Response (or an ``error`` event) of the upstream's as the gateway's error."""
    kind = err.code if err is not None else code
    if kind in ("rate_limit_exceeded", "rate_limit_error"):
        return RateLimited("The upstream model server is rate limiting; retry later.", code="upstream_rate_limited",
                           retry_after=1.0)
    return UpstreamError("The upstream model server failed the response.", code="upstream_stream_error")


def chat_completion(body: bytes) -> bytes:
    """A whole Response of the upstream's as the chat completion the guard and the encoder read."""
    try:
        resp = _response(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError("The upstream returned a reply that is not a Response.") from None
    if resp.status == "failed":
        raise failure(resp.error)
    if resp.status not in ("completed", "incomplete"):
        raise UpstreamError("The upstream returned a Response that is not complete.")
    texts: list[str] = []
    refusals: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for item in resp.output or ():
        if item.type == "message":
            for part in item.content or ():
                if part.type == "output_text":
                    texts.append(part.text or "")
                elif part.type == "refusal":
                    refusals.append(part.refusal or "")
        elif item.type == "function_call":
            calls.append(tool_call(item.call_id or "", item.name or "", item.arguments or ""))
        elif item.type == "reasoning":
            thoughts.extend(p.text or "" for p in item.content or () if p.type == "reasoning_text")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
    if refusals:
        message["refusal"] = "".join(refusals)
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    return completion(resp.id, resp.model, message, _finish(resp, len(calls)),
                      _usage(resp.usage) if resp.usage is not None else None)


class ChatEvents(NativeStream):
    """A Responses event stream in (bytes split anywhere), the chat form's events out.

    ``feed`` returns the pieces to relay (one run of chat events, or none); ``done`` is set at
    ``response.completed`` or ``response.incomplete``: until then the chat stream has no ``[DONE]``.
    """

    __slots__ = ("_calls", "_argued")

    def __init__(self) -> None:
        super().__init__()
        self._calls: dict[int, int] = {}  # output index -> the chat tool index of its function call
        self._argued: set[int] = set()  # chat tool indexes whose arguments have been sent

    def _read(self, raw: bytes) -> None:
        data = event_data(raw)
        if data is None:
            return  # a comment
        try:
            ev = _event(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise UpstreamError("The upstream sent an event that is not a Responses stream event.",
                                code="upstream_bad_event") from None
        kind, delta = ev.type, ev.delta
        if kind == "response.output_text.delta":
            if isinstance(delta, str) and delta:
                self._chunk({"content": delta})
        elif kind == "response.function_call_arguments.delta":
            k = self._calls.get(ev.output_index)  # type: ignore[arg-type]
            if k is not None and isinstance(delta, str) and delta:
                self._arguments(k, delta)
        elif kind == "response.reasoning_text.delta":
            if isinstance(delta, str) and delta:
                self._chunk({"reasoning_content": delta})
        elif kind == "response.refusal.delta":
            if isinstance(delta, str) and delta:
                self._chunk({"refusal": delta})
        elif kind == "response.output_item.added":
            self._added(ev)
        elif kind in ("response.function_call_arguments.done", "response.output_item.done"):
            self._whole_arguments(ev)
        elif kind in ("response.completed", "response.incomplete"):
            self._end(ev.response or _Ended(status=kind.removeprefix("response.")))
        elif kind == "response.failed":
            raise failure(ev.response.error if ev.response is not None else None)
        elif kind == "error":
            raise failure(None, ev.code)
        # other events (created, in_progress, parts added and done...): nothing the chat form carries

    def _added(self, ev: _Event) -> None:
        item = ev.item
        if item is None or item.type != "function_call" or ev.output_index is None:
            return
        k = self._calls[ev.output_index] = len(self._calls)
        self._open_call(k, item.call_id or "", item.name or "")
        if item.arguments:  # whole at the start (valid, if not the usual way)
            self._arguments(k, item.arguments)

    def _whole_arguments(self, ev: _Event) -> None:
        """A call whose arguments came whole at its end, and in no delta."""
        k = self._calls.get(ev.output_index)  # type: ignore[arg-type]
        if k is None or k in self._argued:
            return
        whole = ev.arguments if ev.arguments is not None else (ev.item.arguments if ev.item is not None else None)
        if whole:
            self._arguments(k, whole)

    def _end(self, resp: _Ended) -> None:
        self._chunk({}, _finish(resp, len(self._calls)))
        if resp.usage is not None:
            self._usage_chunk(_usage(resp.usage))
        self._run.append(DONE)
        self.done = True

    def _arguments(self, k: int, piece: str) -> None:
        self._argued.add(k)
        self._chunk({"tool_calls": [{"index": k, "function": {"arguments": piece}}]})
