"""``POST /v1/chat/completions``: a deterministic reply at the modelled speed, whole or streamed.

A request's path: decode -> faults -> tokenize prompt -> wait for a slot -> prefix cache ->
prefill delay -> tokens (streamed with the decode delay between them) -> usage.
"""

from __future__ import annotations

import asyncio
from typing import Any
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgspec
from aiohttp import web

from sluice.core import clock

from . import text, tokens
from .latency import pause
from .tools import call_events, call_message, scripted_calls, scripted_words
from .replica import MAX_MODEL_LEN, ReplicaBase, encode, json_reply
from .schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    PromptTokensDetails,
    Usage,
)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # spreads the keys of choices 1..n-1 away from choice 0
_chat_decoder = msgspec.json.Decoder(ChatRequest)
_DONE = b"data: [DONE]\n\n"
_MALFORMED = b"this is not an event\n\n"  # a line with no SSE field name
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# Generated words come from a fixed vocabulary, so their JSON encodings are computed once.
_ENCODED_WORDS: dict[str, bytes] = {}


def _encoded(word: str) -> bytes:
    got = _ENCODED_WORDS.get(word)
    if got is None:
        got = _ENCODED_WORDS[word] = encode(word)
    return got


# Encodes one SSE event from a chunk's choices (and optional usage).
_EventFn = Callable[..., bytes]


class _Plan(msgspec.Struct, gc=False):
    """What one choice will say: its tokens and why it stops."""

    words: list[str]
    finish_reason: str


class ChatCompletions(ReplicaBase):
    """The chat route of a replica."""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``: a deterministic reply at the modelled speed."""
        stats = self.stats
        stats.chat_requests += 1
        traceparent = request.headers.get("traceparent")
        if traceparent is not None:
            self.traceparents.append(traceparent)
        with self._in_flight():
            req = await self._admit(request, _chat_decoder)
            if isinstance(req, web.Response):
                return req
            # "body": the request as it arrived (aiohttp keeps the bytes read; embedded, not re-encoded)
            self.last_chat = {"max_tokens": req.max_tokens, "max_completion_tokens": req.max_completion_tokens,
                              "tools": [t.get("function", {}).get("name") for t in req.tools or () if isinstance(t, dict)],
                              "messages": [m.content for m in req.messages], "body": msgspec.Raw(await request.read()),
                              "authorization": request.headers.get("authorization"),
                              "x-api-key": request.headers.get("x-api-key"), "headers": dict(request.headers)}
            if req.stream_options is not None and not req.stream:
                return self._refuse(400, "Stream options can only be defined when `stream=True`.")
            injected = await self._apply_faults(request)
            if injected is not None:
                return injected

            prompt = tokens.message_tokens((m.role, m.content) for m in req.messages)
            n_prompt = len(prompt)
            max_tokens = req.max_completion_tokens or req.max_tokens or self.settings.default_max_tokens
            if n_prompt + max_tokens > MAX_MODEL_LEN:
                return self._refuse(
                    400,
                    f"This model's maximum context length is {MAX_MODEL_LEN} tokens. However, you requested "
                    f"{n_prompt + max_tokens} tokens ({n_prompt} in the messages, {max_tokens} in the completion). "
                    "Please reduce the length of the messages or completion.",
                )
            seed = self.settings.seed if req.seed is None else (self.settings.seed * 1_000_003 + req.seed) & _MASK64
            key = text.prompt_key(prompt, seed)
            plans = [self._plan((key + i * _GOLDEN) & _MASK64, max_tokens, bool(req.ignore_eos), req.min_tokens or 0)
                     for i in range(req.n or 1)]
            calls = scripted_calls(req)
            if calls is not None:
                return await self._tool_calls(request, req, calls, n_prompt)
            words = scripted_words(req)
            if words is not None:
                plans = [_Plan(words=words, finish_reason="stop")]
            if self.faults.active and self.faults.spec.say_first is not None:
                for plan in plans:
                    plan.words.insert(0, self.faults.spec.say_first)

            async with self.latency.slot():
                usage = Usage(
                    prompt_tokens=n_prompt,
                    completion_tokens=sum(len(p.words) for p in plans),
                    total_tokens=0,
                    prompt_tokens_details=PromptTokensDetails(cached_tokens=0),
                )
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
                stats.prompt_tokens += n_prompt
                if req.stream:
                    include_usage = req.stream_options is not None and bool(req.stream_options.include_usage)
                    return await self._stream(request, req.model, plans, usage, include_usage, prompt)
                longest = max(len(p.words) for p in plans)
                await self._prefill(prompt, usage)
                with self._decoding():
                    # The batch is sampled once, at the first step: a non-streamed reply is one sleep.
                    await pause(self.latency.step_s() * max(longest - 1, 0))
                stats.completion_tokens += usage.completion_tokens
                body = ChatCompletion(
                    id=self._new_id("chatcmpl"),
                    created=int(clock.now()),
                    model=req.model,
                    choices=[
                        Choice(index=i, message=AssistantMessage(content="".join(p.words)), finish_reason=p.finish_reason)
                        for i, p in enumerate(plans)
                    ],
                    usage=usage,
                )
                return json_reply(body)

    async def _tool_calls(self, request: web.Request, req: ChatRequest, calls: list[tuple[str, str]],
                          n_prompt: int) -> web.StreamResponse:
        """A scripted tool-call answer (sim/tools.py), whole or streamed like vLLM."""
        ids = [self._new_id("call") for _ in calls]
        n_out = sum(tokens.count(name) + tokens.count(args) for name, args in calls)  # what it generated
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n_out, "total_tokens": n_prompt + n_out}
        head = {"id": self._new_id("chatcmpl"), "created": int(clock.now()), "model": req.model}
        if not req.stream:
            return json_reply({**head, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": call_message(calls, ids), "logprobs": None, "finish_reason": "tool_calls"}]})
        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        chunk = {**head, "object": "chat.completion.chunk"}
        for ev in call_events(chunk, calls, ids):
            await resp.write(ev)
        tail = b""
        if req.stream_options is not None and req.stream_options.include_usage:
            tail = b"data: " + encode({**chunk, "choices": [], "usage": usage}) + b"\n\n"
        await resp.write_eof(tail + _DONE)
        return resp

    def _plan(self, key: int, max_tokens: int, ignore_eos: bool, min_tokens: int = 0) -> _Plan:
        natural = max(text.natural_length(key), min_tokens)  # vLLM's min_tokens: no stop before it
        if ignore_eos or natural >= max_tokens:
            return _Plan(words=text.generate(key, max_tokens), finish_reason="length")
        return _Plan(words=text.generate(key, natural), finish_reason="stop")

    async def _prefill(self, prompt: list[str], usage: Usage) -> None:
        """Wait out the prefill: base latency, then the uncached tokens at the per-token cost.

        With a prefill limit the cache is looked up only once a prefill slot is free, as vLLM's
        scheduler does, so a prompt queued behind the one that caches its prefix still hits.
        """
        latency = self.latency
        details = usage.prompt_tokens_details
        assert details is not None
        if not latency.serial_prefill:
            details.cached_tokens = cached = self._lookup(prompt)
            await pause(latency.ttft(len(prompt) - cached))
            return
        await pause(latency.base_s)
        async with latency.prefill_slot():
            details.cached_tokens = cached = self._lookup(prompt)
            await pause(latency.prefill_s * (len(prompt) - cached))

    @contextmanager
    def _decoding(self) -> Iterator[None]:
        """Count a sequence in the decode batch while it generates."""
        latency = self.latency
        latency.decoding += 1
        try:
            yield
        finally:
            latency.decoding -= 1

    def _lookup(self, prompt: list[str]) -> int:
        stats = self.stats
        cached = self.cache.lookup_and_insert(prompt)
        stats.prefix_cache_lookups += 1
        stats.prefix_cache_query_tokens += len(prompt)
        if cached:
            stats.prefix_cache_hits += 1
            stats.prefix_cache_hit_tokens += cached
        return cached

    async def _stream(
        self, request: web.Request, model: str, plans: list[_Plan], full_usage: Usage, include_usage: bool,
        prompt: list[str],
    ) -> web.StreamResponse:
        """Server-sent events: role chunk, one chunk per token, finish chunk, optional usage, [DONE]."""
        stats = self.stats
        stats.streams_started += 1
        chunk_id = self._new_id("chatcmpl")
        created = int(clock.now())

        def event(choices: list[ChunkChoice], usage: Usage | msgspec.UnsetType = msgspec.UNSET) -> bytes:
            chunk = ChatCompletionChunk(
                id=chunk_id, object="chat.completion.chunk", created=created, model=model, choices=choices, usage=usage
            )
            return b"data: " + encode(chunk) + b"\n\n"

        # Content chunks differ only in index and text: encode the envelope once per choice, splice words in.
        templates: list[tuple[bytes, bytes]] = []
        for i in range(len(plans)):
            head, tail = event([ChunkChoice(index=i, delta=Delta(content="\x00"))]).split(b'"\\u0000"')
            templates.append((head, tail))

        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        spec, cut, stall, bad = self.faults.in_stream()
        decode_s = self.latency.decode_s
        longest = max(len(p.words) for p in plans)
        sent = 0
        usage = full_usage if include_usage else None
        try:
            if await self._opening(request, resp, prompt, full_usage, spec):
                return resp
            if stall == 0:
                return await self._stall(request, resp)
            if bad == 0:
                await resp.write(_MALFORMED)
            first = b"".join(event([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))]) for i in range(len(plans)))
            if decode_s == 0 and cut is None and stall is None and bad is None:
                # Every token is ready at once, so the whole stream is one write: the cheap path for benchmarks.
                parts = [first]
                if len(plans) == 1:
                    head, tail = templates[0]
                    plan = plans[0]
                    parts.extend([head + _encoded(w) + tail for w in plan.words])
                    parts.append(event([ChunkChoice(index=0, delta=Delta(), finish_reason=plan.finish_reason)]))
                else:
                    for step in range(longest):
                        parts.extend(data for data, _ in self._step(step, plans, templates, event))
                parts.append(self._tail(usage, event))
                stats.completion_tokens += sum(len(p.words) for p in plans)
                await resp.write_eof(b"".join(parts))
                stats.streams_completed += 1
                return resp
            await resp.write(first)
            if cut == 0:
                return self._cut(request, resp)
            loop = asyncio.get_running_loop()
            deadline = loop.time()
            with self._decoding():
                for step in range(longest):
                    if step:
                        # Sleep to a deadline, not a fixed interval, so timer overshoot does not add up;
                        # each step's length follows the batch decoding at that moment.
                        deadline += self.latency.step_s()
                        await pause(deadline - loop.time())
                    for data, is_content in self._step(step, plans, templates, event):
                        await resp.write(data)
                        if not is_content:
                            continue
                        sent += 1
                        stats.completion_tokens += 1
                        ended = await self._fault(sent, (cut, stall, bad), request, resp, _MALFORMED)
                        if ended is not None:
                            return ended
            await resp.write_eof(self._tail(usage, event))
            stats.streams_completed += 1
            return resp
        except ConnectionError:
            # The client closed the connection between two tokens: stop generating.
            stats.client_disconnects += 1
            return resp

    async def _stall(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """The injected fault: keep the connection open and send nothing more, until the client leaves."""
        self.stats.streams_stalled += 1
        await self._closing.wait()
        return self._cut(request, resp)

    async def _opening(self, request: web.Request, resp: web.StreamResponse, prompt: list[str], usage: Any,
                       spec: Any) -> bool:
        """A stream's prefill, then the faults that come before its first event (a delay, a cut):
        True when the stream was cut there (every wire's writer then returns at once)."""
        await self._prefill(prompt, usage)
        if spec is not None and spec.first_token_delay_ms:
            await pause(spec.first_token_delay_ms / 1000.0)
        if spec is not None and spec.cut_before_first_event:
            self._cut(request, resp)
            return True
        return False

    async def _fault(self, sent: int, at: tuple[int | None, int | None, int | None], request: web.Request,
                     resp: web.StreamResponse, malformed: bytes) -> web.StreamResponse | None:
        """The fault planned after ``sent`` events (``at``: where to cut, stall, write a malformed event):
        a cut or a stall ends the stream and its response is returned; a malformed event is written."""
        cut, stall, bad = at
        if sent == cut:
            return self._cut(request, resp)
        if sent == stall:
            return await self._stall(request, resp)
        if sent == bad:
            await resp.write(malformed)
        return None

    def _cut(self, request: web.Request, resp: web.StreamResponse) -> web.StreamResponse:
        """The injected fault: drop the connection mid-body, with no terminating chunk and no [DONE]."""
        self.stats.streams_cut += 1
        if request.transport is not None:
            request.transport.close()
        return resp

    @staticmethod
    def _step(
        step: int, plans: list[_Plan], templates: list[tuple[bytes, bytes]], event: _EventFn
    ) -> list[tuple[bytes, bool]]:
        """One decode step's events, each flagged if it carries content: a chunk per live choice, then finishes."""
        out: list[tuple[bytes, bool]] = []
        for i, plan in enumerate(plans):
            words = plan.words
            if step < len(words):
                head, tail = templates[i]
                out.append((head + _encoded(words[step]) + tail, True))
                if step == len(words) - 1:
                    out.append((event([ChunkChoice(index=i, delta=Delta(), finish_reason=plan.finish_reason)]), False))
        return out

    @staticmethod
    def _tail(usage: Usage | None, event: _EventFn) -> bytes:
        """The end of a complete stream: the usage chunk when asked for, then [DONE]."""
        if usage is None:
            return _DONE
        return event([], usage) + _DONE
