"""``POST /v1/messages`` and ``/v1/messages/count_tokens``: the sim as a native Anthropic backend.

Written here from the sim's own plan (its words or its ``sim:call`` calls), not by re-encoding
its chat output: the sim may import ``core`` only, and a native path checked against a second,
independent writer of the grammar catches what one writer checked against itself would not.
The prompt is the chat rendering of the conversation (system; per turn its tool results, then
its text), so a prompt counts the same tokens here as through a chat translation of it.

As Anthropic's API does, for the native path's tests: a request with ``thinking`` enabled is answered
with a ``thinking`` block first (deterministic text, a ``signature`` over it); one with ``cache_control``
breakpoints reports the prompt up to its last breakpoint that the prefix cache did not serve as
``cache_creation_input_tokens``; a stream sends ``ping`` after ``message_start`` and after its first
delta. The last request's ``anthropic-*`` headers, credentials and body are kept for ``/sim/stats``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Annotated, Any

import msgspec
from aiohttp import web

from . import text, tokens
from .latency import pause
from .chat import ChatCompletions
from .replica import MAX_MODEL_LEN, encode
from .schema import PromptTokensDetails, Usage
from .tools import calls_in, words_in

_FRAGMENT = 5  # characters of arguments per input_json_delta, as the chat stream splits them
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_STOP = {"stop": "end_turn", "length": "max_tokens"}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


class AnthropicMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[dict[str, Any]]


class MessagesRequest(msgspec.Struct, kw_only=True):
    """What the sim reads of a Messages request; other fields are ignored, as a lenient backend would."""

    model: str
    messages: Annotated[list[AnthropicMessage], msgspec.Meta(min_length=1)]
    max_tokens: Annotated[int, msgspec.Meta(ge=1)]
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = False
    tools: list[Any] | None = None
    thinking: dict[str, Any] | None = None
    cache_control: dict[str, Any] | None = None  # automatic caching: a breakpoint at the last cacheable block


class CountRequest(msgspec.Struct, kw_only=True):
    model: str
    messages: Annotated[list[AnthropicMessage], msgspec.Meta(min_length=1)]
    system: str | list[dict[str, Any]] | None = None
    tools: list[Any] | None = None


_messages_decoder = msgspec.json.Decoder(MessagesRequest)
_count_decoder = msgspec.json.Decoder(CountRequest)


def anthropic_error(status: int, message: str, retry_after: int = 1) -> web.Response:
    """Anthropic's error body; 429, 503 and 529 carry ``retry-after`` (seconds)."""
    kind = _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
    headers = {"retry-after": str(retry_after)} if status in (429, 503, 529) else None
    return web.Response(body=encode({"type": "error", "error": {"type": kind, "message": message}}), status=status,
                        content_type="application/json", headers=headers)


def _texts(blocks: list[dict[str, Any]], sep: str = "\n\n") -> str:
    return sep.join(b["text"] for b in blocks if b.get("type") == "text" and isinstance(b.get("text"), str))


def chat_turns(system: str | list[dict[str, Any]] | None, messages: list[AnthropicMessage]) -> list[tuple[str, str]]:
    """(role, text) of the conversation as a chat template sees it: a turn's tool results are ``tool`` messages."""
    out: list[tuple[str, str]] = []
    if system:
        out.append(("system", system if isinstance(system, str) else _texts(system)))
    for m in messages:
        if isinstance(m.content, str):
            out.append((m.role, m.content))
            continue
        results = [b for b in m.content if b.get("type") == "tool_result"]
        for r in results:
            c = r.get("content")
            out.append(("tool", c if isinstance(c, str) else _texts(c) if isinstance(c, list) else ""))
        if m.role == "assistant" or len(results) < len(m.content) or not results:
            out.append((m.role, _texts(m.content)))
    return out


def _last_user(messages: list[AnthropicMessage]) -> str:
    """The text of the last user turn that is more than tool results (where ``sim:`` directives are read)."""
    for m in reversed(messages):
        if m.role != "user":
            continue
        if isinstance(m.content, str):
            return m.content
        if not m.content or any(b.get("type") != "tool_result" for b in m.content):
            return _texts(m.content, "\n")
    return ""


def _breakpoint(req: MessagesRequest) -> int | None:
    """How many messages the prompt's last ``cache_control`` breakpoint covers (0: only system and tools),
    or None when the request has none."""
    if req.cache_control is not None:
        return len(req.messages)
    at = None
    if any(isinstance(b, dict) and b.get("cache_control") for b in (req.tools or ())) or (
            isinstance(req.system, list) and any(b.get("cache_control") for b in req.system)):
        at = 0
    for n, m in enumerate(req.messages):
        if isinstance(m.content, list) and any(isinstance(b, dict) and b.get("cache_control") for b in m.content):
            at = n + 1
    return at


def _thought(said: str) -> tuple[list[str], str]:
    """A thinking block's words and its signature (deterministic: the same request thinks the same)."""
    words = ["Considering ", "the ", "request: ", *[w + " " for w in said.split()[:6]], "then ", "answering."]
    signature = base64.b64encode(hashlib.sha256("".join(words).encode()).digest() * 2).decode()
    return words, signature


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + encode(payload) + b"\n\n"


class Messages(ChatCompletions):
    """The Anthropic Messages routes of a replica."""

    async def count_tokens(self, request: web.Request) -> web.Response:
        """``POST /v1/messages/count_tokens``: the prompt's tokens by the sim's tokenizer."""
        self.stats.requests_total += 1
        try:
            req = _count_decoder.decode(await request.read())
        except (msgspec.DecodeError, RecursionError):
            return anthropic_error(400, "The request body does not fit the count_tokens schema.")
        if req.model not in self.models:
            return anthropic_error(404, f"model: {req.model}")
        prompt = tokens.message_tokens(chat_turns(req.system, req.messages))
        return web.Response(body=encode({"input_tokens": len(prompt)}), content_type="application/json")

    async def messages(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/messages``: the sim's deterministic reply in Anthropic's wire, whole or streamed."""
        stats = self.stats
        stats.requests_total += 1
        raw = await request.read()
        self.last_messages = {"anthropic-version": request.headers.get("anthropic-version"),
                              "anthropic-beta": request.headers.get("anthropic-beta"),
                              "x-api-key": request.headers.get("x-api-key"),
                              "authorization": request.headers.get("authorization"), "body": msgspec.Raw(raw),
                              "headers": dict(request.headers)}
        with self._in_flight():
            try:
                req = _messages_decoder.decode(raw)
            except (msgspec.DecodeError, RecursionError):
                stats.errors_returned += 1
                return anthropic_error(400, "The request body does not fit the Messages schema.")
            if req.model not in self.models:
                stats.errors_returned += 1
                return anthropic_error(404, f"model: {req.model}")
            injected = await self._apply_faults(request, anthropic_error)
            if injected is not None:
                return injected
            prompt = tokens.message_tokens(chat_turns(req.system, req.messages))
            if len(prompt) + req.max_tokens > MAX_MODEL_LEN:
                stats.errors_returned += 1
                return anthropic_error(400, f"prompt is too long: {len(prompt)} tokens + {req.max_tokens} > {MAX_MODEL_LEN} maximum")
            said = _last_user(req.messages)
            calls = calls_in(said) if req.tools else None
            blocks: list[tuple[str, Any]]  # ("text", words) | ("tool_use", (id, name, args)) | ("thinking", (words, sig))
            if calls is not None:
                blocks = [("tool_use", (self._new_id("toolu").replace("-", "_"), n, a)) for n, a in calls]
                finish, n_out = "tool_use", sum(tokens.count(n) + tokens.count(a) for n, a in calls)
            else:
                words = words_in(said)
                plan = self._plan(text.prompt_key(prompt, self.settings.seed), req.max_tokens, False)
                if words is not None:
                    plan.words, plan.finish_reason = words, "stop"
                if self.faults.active and self.faults.spec.say_first is not None:
                    plan.words.insert(0, self.faults.spec.say_first)
                blocks = [("text", plan.words)]
                finish, n_out = _STOP[plan.finish_reason], len(plan.words)
            if req.thinking is not None and req.thinking.get("type") in ("enabled", "adaptive"):
                thought = _thought(said)
                blocks.insert(0, ("thinking", thought))
                n_out += len(thought[0])
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=n_out, total_tokens=len(prompt) + n_out,
                          prompt_tokens_details=PromptTokensDetails(cached_tokens=0))
            covered = _breakpoint(req)
            cached_to = None if covered is None else min(len(prompt), len(tokens.message_tokens(
                chat_turns(req.system, req.messages[:covered]))))
            stats.prompt_tokens += len(prompt)
            message_id = self._new_id("msg").replace("-", "_")
            async with self.latency.slot():
                if req.stream:
                    return await self._stream_messages(request, req.model, message_id, blocks, finish, usage, prompt,
                                                       cached_to)
                await self._prefill(prompt, usage)
                with self._decoding():
                    await pause(self.latency.step_s() * max(n_out - 1, 0))
                stats.completion_tokens += n_out
                content = [{"type": "text", "text": "".join(v)} if kind == "text" else
                           {"type": "thinking", "thinking": "".join(v[0]), "signature": v[1]} if kind == "thinking" else
                           {"type": "tool_use", "id": v[0], "name": v[1], "input": msgspec.json.decode(v[2])}
                           for kind, v in blocks]
                body = {"id": message_id, "type": "message", "role": "assistant", "model": req.model,
                        "content": content, "stop_reason": finish, "stop_sequence": None,
                        "usage": _usage(usage, cached_to)}
                return web.Response(body=encode(body), content_type="application/json")

    async def _stream_messages(self, request: web.Request, model: str, message_id: str, blocks: list[tuple[str, Any]],
                               finish: str, usage: Usage, prompt: list[str], cached_to: int | None) -> web.StreamResponse:
        """Anthropic's event grammar, one text_delta per word or one input_json_delta per fragment."""
        stats = self.stats
        stats.streams_started += 1
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        spec, cut, stall, bad = self.faults.in_stream()
        try:
            if await self._opening(request, resp, prompt, usage, spec):
                return resp
            start = _usage(usage, cached_to)
            start["output_tokens"] = 0
            await resp.write(_event("message_start", {"type": "message_start", "message": {
                "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": start}}))
            await resp.write(_PING)
            sent = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time()
            with self._decoding():
                for index, (kind, value) in enumerate(blocks):
                    if kind == "text":
                        opened, pieces = {"type": "text", "text": ""}, [("text_delta", "text", w) for w in value]
                    elif kind == "thinking":
                        opened = {"type": "thinking", "thinking": "", "signature": ""}
                        pieces = [("thinking_delta", "thinking", w) for w in value[0]]
                        pieces.append(("signature_delta", "signature", value[1]))
                    else:
                        args = value[2]
                        opened = {"type": "tool_use", "id": value[0], "name": value[1], "input": {}}
                        pieces = [("input_json_delta", "partial_json", args[at:at + _FRAGMENT])
                                  for at in range(0, len(args), _FRAGMENT)]
                    await resp.write(_event("content_block_start", {"type": "content_block_start", "index": index,
                                                                    "content_block": opened}))
                    for kind_delta, field, piece in pieces:
                        ended = await self._fault(sent, (cut, stall, bad), request, resp, b"this is not an event\n\n")
                        if ended is not None:
                            return ended
                        if sent and self.latency.decode_s:
                            deadline += self.latency.step_s()
                            await pause(deadline - loop.time())
                        await resp.write(_event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                                        "delta": {"type": kind_delta, field: piece}}))
                        if not sent:
                            await resp.write(_PING)
                        sent += 1
                        stats.completion_tokens += kind_delta in ("text_delta", "thinking_delta")
                    await resp.write(_event("content_block_stop", {"type": "content_block_stop", "index": index}))
            if any(kind == "tool_use" for kind, _ in blocks):
                stats.completion_tokens += usage.completion_tokens - sum(len(v[0]) for k, v in blocks if k == "thinking")
            await resp.write(_event("message_delta", {"type": "message_delta",
                                                      "delta": {"stop_reason": finish, "stop_sequence": None},
                                                      "usage": _usage(usage, cached_to)}))
            if sent == cut:  # a cut after every delta: the reply is all there, but never said complete
                return self._cut(request, resp)
            await resp.write_eof(_event("message_stop", {"type": "message_stop"}))
            stats.streams_completed += 1
            return resp
        except ConnectionError:
            stats.client_disconnects += 1
            return resp


_PING = _event("ping", {"type": "ping"})


def _usage(u: Usage, cached_to: int | None = None) -> dict[str, int]:
    """Anthropic's usage: input excludes what the prefix cache served, counted as a cache read, and what a
    ``cache_control`` breakpoint wrote to it (the prompt up to ``cached_to`` not read), a cache creation."""
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details is not None else 0
    created = max(0, cached_to - cached) if cached_to is not None else 0
    return {"input_tokens": u.prompt_tokens - cached - created, "output_tokens": u.completion_tokens,
            "cache_creation_input_tokens": created, "cache_read_input_tokens": cached}
