"""``POST /v1/responses``: the sim as a native OpenAI Responses backend, whole or streamed.

Written here from the sim's own plan (its words or its ``sim:call`` calls), not by re-encoding
its chat output: the sim may import ``core`` only, and a native path checked against a second,
independent writer of the grammar catches what one writer checked against itself would not.
The sim is stateless: a ``previous_response_id`` is refused (a gateway resolves chains itself and
sends the whole input, with ``store: false``). The prompt is the chat rendering of the input
(instructions; system and developer messages as system; consecutive function calls as one
assistant turn; each function_call_output a tool turn; reasoning items nothing), so a prompt
counts the same tokens here as through a chat translation of it.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import msgspec
from aiohttp import web

from sluice.core import clock

from . import text, tokens
from .chat import ChatCompletions
from .latency import pause
from .replica import MAX_MODEL_LEN, encode
from .schema import PromptTokensDetails, Usage
from .tools import calls_in, words_in

_FRAGMENT = 5  # characters of arguments per function_call_arguments.delta, as the chat stream splits them
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "invalid_request_error",
          429: "rate_limit_error"}


class ResponsesRequest(msgspec.Struct, kw_only=True):
    """What the sim reads of a Responses request; other fields are ignored, as a lenient backend would."""

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    stream: bool | None = False
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = "auto"
    parallel_tool_calls: bool | None = True
    previous_response_id: str | None = None
    store: bool | None = True
    temperature: float | None = None
    top_p: float | None = None
    metadata: dict[str, str] | None = None


_decoder = msgspec.json.Decoder(ResponsesRequest)


def openai_error(status: int, message: str, retry_after: int = 1, param: str | None = None) -> web.Response:
    """OpenAI's error envelope; 429 and 503 carry ``Retry-After`` (seconds)."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    headers = {"Retry-After": str(retry_after)} if status in (429, 503) else None
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.Response(body=encode(body), status=status, content_type="application/json", headers=headers)


def _text(content: Any, sep: str = " ") -> str:
    """The text of a message's content or a call's output: a string, or its text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return sep.join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))


def _kind(item: dict[str, Any]) -> Any:
    return item.get("type", "message" if "role" in item else None)


def chat_turns(instructions: str | None, items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(role, text) of the input as a chat template sees it."""
    out: list[tuple[str, str]] = [("system", instructions)] if instructions else []
    joinable = False  # whether the last turn is an assistant's that function calls join
    for item in items:
        kind = _kind(item)
        if kind == "message":
            role = item.get("role")
            out.append(("system" if role in ("system", "developer") else str(role), _text(item.get("content"))))
            joinable = role == "assistant"
        elif kind == "function_call":
            if not joinable:
                out.append(("assistant", ""))
                joinable = True
        elif kind == "function_call_output":
            out.append(("tool", _text(item.get("output"))))
            joinable = False
    return out


def _last_user(items: list[dict[str, Any]]) -> str:
    """The text of the last user message (where ``sim:`` directives are read), text parts one per line."""
    for item in reversed(items):
        if _kind(item) == "message" and item.get("role") == "user":
            return _text(item.get("content"), "\n")
    return ""


def _event(kind: str, seq: int, fields: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + encode({"type": kind, **fields, "sequence_number": seq}) + b"\n\n"


def _usage(u: Usage) -> dict[str, Any]:
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details is not None else 0
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


class Responses(ChatCompletions):
    """The OpenAI Responses route of a replica."""

    async def responses(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/responses``: the sim's deterministic reply in the Responses wire, whole or streamed."""
        stats = self.stats
        stats.requests_total += 1
        raw = await request.read()
        # as it arrived (embedded, not re-encoded; every header line, a repeated one too), for tests of what a gateway sends
        self.last_responses = {"body": msgspec.Raw(raw), "headers": [[str(k), v] for k, v in request.headers.items()]}
        with self._in_flight():
            try:
                req = _decoder.decode(raw)
            except (msgspec.DecodeError, RecursionError):
                stats.errors_returned += 1
                return openai_error(400, "The request body does not fit the Responses schema.")
            if req.model not in self.models:
                stats.errors_returned += 1
                return openai_error(404, f"The model `{req.model}` does not exist.", param="model")
            if req.previous_response_id is not None:
                stats.errors_returned += 1
                return openai_error(400, "This backend stores no responses: send the whole input with store: false.",
                                    param="previous_response_id")
            injected = await self._apply_faults(request, openai_error)
            if injected is not None:
                return injected
            items = [{"type": "message", "role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
            prompt = tokens.message_tokens(chat_turns(req.instructions, items))
            max_tokens = req.max_output_tokens or self.settings.default_max_tokens
            if len(prompt) + max_tokens > MAX_MODEL_LEN:
                stats.errors_returned += 1
                return openai_error(400, f"The input is too long: {len(prompt)} tokens + {max_tokens} > {MAX_MODEL_LEN}.",
                                    param="input")
            said = _last_user(items)
            functions = [t for t in req.tools or () if t.get("type") == "function"]
            calls = calls_in(said) if functions else None
            plan = self._plan(text.prompt_key(prompt, self.settings.seed), max_tokens, False)
            if calls is not None:
                words: list[str] = []
                finish, n_out = "stop", sum(tokens.count(n) + tokens.count(a) for n, a in calls)
            else:
                scripted = words_in(said)
                if scripted is not None:
                    plan.words, plan.finish_reason = scripted, "stop"
                if self.faults.active and self.faults.spec.say_first is not None:
                    plan.words.insert(0, self.faults.spec.say_first)
                words, finish, n_out = plan.words, plan.finish_reason, len(plan.words)
            usage = Usage(prompt_tokens=len(prompt), completion_tokens=n_out, total_tokens=len(prompt) + n_out,
                          prompt_tokens_details=PromptTokensDetails(cached_tokens=0))
            stats.prompt_tokens += len(prompt)
            rid = self._new_id("resp").replace("-", "_")
            plan_calls = [(self._new_id("fc").replace("-", "_"), self._new_id("call").replace("-", "_"), n, a)
                          for n, a in calls or ()]
            shell = self._shell(req, rid)
            async with self.latency.slot():
                if req.stream:
                    return await self._stream_response(request, shell, words, plan_calls, finish, usage, prompt)
                await self._prefill(prompt, usage)
                with self._decoding():
                    await pause(self.latency.step_s() * max(n_out - 1, 0))
                stats.completion_tokens += n_out
                incomplete = finish == "length"
                output: list[dict[str, Any]] = []
                if words:
                    output.append({"id": self._new_id("msg").replace("-", "_"), "type": "message",
                                   "status": "incomplete" if incomplete else "completed", "role": "assistant",
                                   "content": [_text_part("".join(words))]})
                output += [{"id": i, "type": "function_call", "status": "completed", "call_id": c, "name": n,
                            "arguments": a} for i, c, n, a in plan_calls]
                body = {**shell, "status": "incomplete" if incomplete else "completed", "output": output,
                        "usage": _usage(usage), "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None}
                return web.Response(body=encode(body), content_type="application/json")

    @staticmethod
    def _shell(req: ResponsesRequest, rid: str) -> dict[str, Any]:
        """The Response around its output: id, and the request's settings echoed."""
        return {"id": rid, "object": "response", "created_at": int(clock.now()), "status": "in_progress", "error": None,
                "incomplete_details": None, "instructions": req.instructions, "model": req.model, "output": [],
                "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
                "tool_choice": req.tool_choice, "tools": req.tools or [], "temperature": req.temperature,
                "top_p": req.top_p, "max_output_tokens": req.max_output_tokens, "previous_response_id": None,
                "store": req.store if req.store is not None else True, "metadata": req.metadata or {},
                "text": {"format": {"type": "text"}}, "truncation": "disabled", "background": False, "usage": None}

    async def _stream_response(self, request: web.Request, shell: dict[str, Any], words: list[str],
                               calls: list[tuple[str, str, str, str]], finish: str, usage: Usage,
                               prompt: list[str]) -> web.StreamResponse:
        """The Responses event grammar: one output_text.delta per word, one arguments delta per fragment."""
        stats = self.stats
        stats.streams_started += 1
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        spec, cut, stall, bad = self.faults.in_stream()
        seq = 0

        def event(kind: str, **fields: Any) -> bytes:
            nonlocal seq
            seq += 1
            return _event(kind, seq - 1, fields)

        try:
            if await self._opening(request, resp, prompt, usage, spec):
                return resp
            await resp.write(event("response.created", response=shell) + event("response.in_progress", response=shell))
            incomplete = finish == "length"
            output: list[dict[str, Any]] = []
            items: list[tuple[dict[str, Any], list[tuple[str, str, str]]]] = []  # (item, [(event, field, piece)])
            if words:
                msg = {"id": self._new_id("msg").replace("-", "_"), "type": "message", "status": "in_progress",
                       "role": "assistant", "content": []}
                items.append((msg, [("response.output_text.delta", "delta", w) for w in words]))
            for item_id, call_id, name, args in calls:
                call = {"id": item_id, "type": "function_call", "status": "in_progress", "call_id": call_id,
                        "name": name, "arguments": ""}
                items.append((call, [("response.function_call_arguments.delta", "delta", args[at:at + _FRAGMENT])
                                     for at in range(0, len(args), _FRAGMENT)]))
            sent = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time()
            with self._decoding():
                for index, (item, pieces) in enumerate(items):
                    where = {"item_id": item["id"], "output_index": index}
                    await resp.write(event("response.output_item.added", output_index=index, item=dict(item)))
                    is_message = item["type"] == "message"
                    if is_message:
                        await resp.write(event("response.content_part.added", **where, content_index=0, part=_text_part("")))
                    for kind, field, piece in pieces:
                        ended = await self._fault(sent, (cut, stall, bad), request, resp, b"this is not an event\n\n")
                        if ended is not None:
                            return ended
                        if sent and self.latency.decode_s:
                            deadline += self.latency.step_s()
                            await pause(deadline - loop.time())
                        extra = {"content_index": 0, "logprobs": []} if is_message else {}
                        await resp.write(event(kind, **where, **extra, **{field: piece}))
                        sent += 1
                        stats.completion_tokens += is_message
                    whole = "".join(p for _, _, p in pieces)
                    if is_message:
                        await resp.write(event("response.output_text.done", **where, content_index=0, text=whole, logprobs=[]) +
                                         event("response.content_part.done", **where, content_index=0, part=_text_part(whole)))
                        item["content"] = [_text_part(whole)]
                        item["status"] = "incomplete" if incomplete else "completed"
                    else:
                        await resp.write(event("response.function_call_arguments.done", **where, arguments=whole))
                        item["arguments"], item["status"] = whole, "completed"
                    await resp.write(event("response.output_item.done", output_index=index, item=item))
                    output.append(item)
            if calls:
                stats.completion_tokens += usage.completion_tokens
            final = {**shell, "status": "incomplete" if incomplete else "completed", "output": output,
                     "usage": _usage(usage), "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None}
            await resp.write_eof(event("response.incomplete" if incomplete else "response.completed", response=final))
            stats.streams_completed += 1
            return resp
        except ConnectionError:
            stats.client_disconnects += 1
            return resp
