"""The sim's HTTP face: vLLM's OpenAI-compatible routes, plus ``/sim/*`` controls for tests.

A chat request's path: decode -> faults -> tokenize prompt -> wait for a slot -> prefix
cache -> prefill delay -> tokens (streamed with the decode delay between them) -> usage.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Callable
from itertools import count
from typing import Any

import msgspec
from aiohttp import web

from sluice.core import clock
from sluice.core.config import Sim

from . import embeddings, text, tokens
from .faults import Faults, FaultSpec, error_body
from .latency import LatencyModel, pause
from .prefix_cache import PrefixCache
from .schema import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatRequest,
    Choice,
    ChunkChoice,
    Delta,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)
from .stats import Stats

log = logging.getLogger("sluice.sim")

MAX_MODEL_LEN = 32768
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # spreads the keys of choices 1..n-1 away from choice 0

_encode = msgspec.json.encode
_chat_decoder = msgspec.json.Decoder(ChatRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)
_faults_decoder = msgspec.json.Decoder(FaultSpec)
_JSON = "application/json"
_DONE = b"data: [DONE]\n\n"
_SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
# Generated words come from a fixed vocabulary, so their JSON encodings are computed once.
_ENCODED_WORDS: dict[str, bytes] = {}


def _encoded(word: str) -> bytes:
    got = _ENCODED_WORDS.get(word)
    if got is None:
        got = _ENCODED_WORDS[word] = _encode(word)
    return got


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encode(payload), status=status, content_type=_JSON)


def _error(status: int, message: str) -> web.Response:
    headers = {"Retry-After": "1"} if status in (429, 503) else None
    return web.Response(body=error_body(status, message), status=status, content_type=_JSON, headers=headers)


# Encodes one SSE event from a chunk's choices (and optional usage).
_EventFn = Callable[..., bytes]


class _Plan(msgspec.Struct, gc=False):
    """What one choice will say: its tokens and why it stops."""

    words: list[str]
    finish_reason: str


class Replica:
    """One simulated backend replica: its prefix cache, latency model, faults and counters."""

    def __init__(self, settings: Sim, replica: str = "sim-0") -> None:
        self.settings = settings
        self.replica = replica
        self.models = frozenset(settings.models)
        self.cache = PrefixCache(settings.prefix_cache_blocks, settings.block_tokens)
        self.latency = LatencyModel(settings)
        self.faults = Faults(settings.seed)
        self.stats = Stats()
        self.last_chat: dict[str, Any] = {}  # the output limits the last chat request asked for
        self._ids = count(1)
        self._id_prefix = secrets.token_hex(6)
        self._closing = asyncio.Event()
        created = int(clock.now())
        self._model_list = _encode(
            ModelList(data=[ModelCard(id=m, created=created, max_model_len=MAX_MODEL_LEN, root=m) for m in settings.models])
        )

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self._id_prefix}{next(self._ids):010x}"

    # ---- faults ---------------------------------------------------------------------------

    async def _apply_faults(self, request: web.Request) -> web.Response | None:
        """Hang, delay or fail this request as the current faults say; None means carry on."""
        faults = self.faults
        if not faults.active:
            return None
        spec = faults.spec
        if spec.hang:
            # Accept and never answer: wait until the client gives up (the handler is cancelled)
            # or the server shuts down, then drop the connection without a response.
            await self._closing.wait()
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError
        await pause(spec.delay_ms / 1000.0)
        status = faults.error_status()
        if status is not None:
            self.stats.errors_injected += 1
            return _error(status, f"injected fault: status {status}")
        return None

    async def _admit(self, request: web.Request, decoder: msgspec.json.Decoder) -> Any:
        """Count the request, decode its body and check its model; the request, or the refusal to send."""
        self.stats.requests_total += 1
        try:
            req = decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return self._refuse(400, str(exc))
        if req.model not in self.models:
            return self._refuse(404, f"The model `{req.model}` does not exist.")
        return req

    def _refuse(self, status: int, message: str) -> web.Response:
        self.stats.errors_returned += 1
        return _error(status, message)

    # ---- /v1/chat/completions -------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        """``POST /v1/chat/completions``: a deterministic reply at the modelled speed."""
        stats = self.stats
        stats.chat_requests += 1
        stats.in_flight += 1
        try:
            req = await self._admit(request, _chat_decoder)
            if isinstance(req, web.Response):
                return req
            self.last_chat = {"max_tokens": req.max_tokens, "max_completion_tokens": req.max_completion_tokens}
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
            plans = [self._plan((key + i * _GOLDEN) & _MASK64, max_tokens, bool(req.ignore_eos)) for i in range(req.n or 1)]

            async with self.latency.slot():
                cached = self._lookup(prompt)
                usage = Usage(
                    prompt_tokens=n_prompt,
                    completion_tokens=sum(len(p.words) for p in plans),
                    total_tokens=0,
                    prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
                )
                usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
                stats.prompt_tokens += n_prompt
                ttft = self.latency.ttft(n_prompt - cached)
                if req.stream:
                    include_usage = req.stream_options is not None and bool(req.stream_options.include_usage)
                    return await self._stream(request, req.model, plans, usage if include_usage else None, ttft)
                longest = max(len(p.words) for p in plans)
                await pause(ttft + self.latency.decode_s * max(longest - 1, 0))
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
                return _json(body)
        except asyncio.CancelledError:
            # The client went away (aiohttp cancels the handler): stop generating.
            stats.client_disconnects += 1
            raise
        finally:
            stats.in_flight -= 1

    def _plan(self, key: int, max_tokens: int, ignore_eos: bool) -> _Plan:
        natural = text.natural_length(key)
        if ignore_eos or natural >= max_tokens:
            return _Plan(words=text.generate(key, max_tokens), finish_reason="length")
        return _Plan(words=text.generate(key, natural), finish_reason="stop")

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
        self, request: web.Request, model: str, plans: list[_Plan], usage: Usage | None, ttft: float
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
            return b"data: " + _encode(chunk) + b"\n\n"

        # Content chunks differ only in index and text: encode the envelope once per choice, splice words in.
        templates: list[tuple[bytes, bytes]] = []
        for i in range(len(plans)):
            head, tail = event([ChunkChoice(index=i, delta=Delta(content="\x00"))]).split(b'"\\u0000"')
            templates.append((head, tail))

        resp = web.StreamResponse(headers=_SSE_HEADERS)
        await resp.prepare(request)
        cut = self.faults.spec.disconnect_after_chunks if self.faults.active else None
        decode_s = self.latency.decode_s
        longest = max(len(p.words) for p in plans)
        sent = 0
        try:
            await pause(ttft)
            first = b"".join(event([ChunkChoice(index=i, delta=Delta(role="assistant", content=""))]) for i in range(len(plans)))
            if decode_s == 0 and cut is None:
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
            start = loop.time()
            for step in range(longest):
                if step:
                    # Sleep to a deadline, not a fixed interval, so timer overshoot does not add up.
                    await pause(start + step * decode_s - loop.time())
                for data, is_content in self._step(step, plans, templates, event):
                    await resp.write(data)
                    if not is_content:
                        continue
                    sent += 1
                    stats.completion_tokens += 1
                    if sent == cut:
                        return self._cut(request, resp)
            await resp.write_eof(self._tail(usage, event))
            stats.streams_completed += 1
            return resp
        except ConnectionError:
            # The client closed the connection between two tokens: stop generating.
            stats.client_disconnects += 1
            return resp

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

    # ---- /v1/embeddings -------------------------------------------------------------------

    async def embed(self, request: web.Request) -> web.Response:
        """``POST /v1/embeddings``: deterministic unit vectors, as floats or base64."""
        stats = self.stats
        stats.embedding_requests += 1
        stats.in_flight += 1
        try:
            req = await self._admit(request, _embedding_decoder)
            if isinstance(req, web.Response):
                return req
            items = _embedding_inputs(req.input)
            if items is None:
                return self._refuse(
                    400, "`input` must be a string, a list of strings, a list of token ids or a list of lists of token ids."
                )
            injected = await self._apply_faults(request)
            if injected is not None:
                return injected
            dims = req.dimensions or self.settings.embedding_dimensions
            seed = self.settings.seed
            n_prompt = 0
            keys: list[bytes] = []
            for item in items:
                if isinstance(item, str):
                    n_prompt += tokens.count(item)
                    keys.append(b"s" + item.encode())
                else:
                    n_prompt += len(item)
                    keys.append(b"t" + _encode(item))
            async with self.latency.slot():
                await pause(self.latency.ttft(n_prompt))
            stats.prompt_tokens += n_prompt
            as_base64 = req.encoding_format == "base64"
            data = []
            for i, k in enumerate(keys):
                vec = embeddings.vector(k, dims, seed)
                data.append(EmbeddingData(index=i, embedding=embeddings.to_base64(vec) if as_base64 else vec))
            body = EmbeddingResponse(
                id=self._new_id("embd"),
                created=int(clock.now()),
                model=req.model,
                data=data,
                usage=Usage(prompt_tokens=n_prompt, total_tokens=n_prompt),
            )
            return _json(body)
        except asyncio.CancelledError:
            stats.client_disconnects += 1
            raise
        finally:
            stats.in_flight -= 1

    # ---- the rest ---------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        """``GET /v1/models``."""
        self.stats.requests_total += 1
        self.stats.model_list_requests += 1
        return web.Response(body=self._model_list, content_type=_JSON)

    async def health(self, request: web.Request) -> web.Response:
        """``GET /health``: 200 while the process serves (vLLM's empty body)."""
        return web.Response()

    async def get_stats(self, request: web.Request) -> web.Response:
        """``GET /sim/stats``: counters, gauges, the prefix cache size and the current faults."""
        snap: dict[str, Any] = self.stats.snapshot()
        snap["waiting"] = self.latency.waiting
        snap["prefix_cache_blocks"] = len(self.cache)
        snap["replica"] = self.replica
        snap["faults"] = self.faults.state()
        snap["last_chat"] = self.last_chat
        return _json(snap)

    async def reset_stats(self, request: web.Request) -> web.Response:
        """``POST /sim/stats/reset``."""
        self.stats.reset()
        return _json({"ok": True})

    async def set_faults(self, request: web.Request) -> web.Response:
        """``POST /sim/faults``: replace the injected faults."""
        try:
            spec = _faults_decoder.decode(await request.read())
        except msgspec.DecodeError as exc:
            return _error(400, str(exc))
        self.faults.set(spec)
        return _json(self.faults.state())

    async def clear_faults(self, request: web.Request) -> web.Response:
        """``DELETE /sim/faults``: back to healthy."""
        self.faults.clear()
        return _json(self.faults.state())

    async def reset_prefix_cache(self, request: web.Request) -> web.Response:
        """``POST /reset_prefix_cache``, as vLLM names it."""
        self.cache.clear()
        return web.Response()

    async def on_shutdown(self, app: web.Application) -> None:
        """Release hung requests so shutdown does not wait on them."""
        self._closing.set()


def _embedding_inputs(value: str | list[str | int | list[int]]) -> list[str] | list[list[int]] | None:
    """The inputs as a list of texts or of token-id lists, or None when the shape is not one OpenAI accepts."""
    if isinstance(value, str):
        return [value]
    if not value:
        return None
    if all(isinstance(v, str) for v in value):
        return value  # type: ignore[return-value]
    if all(isinstance(v, int) for v in value):
        return [value]  # type: ignore[list-item]
    if all(isinstance(v, list) and v for v in value):
        return value  # type: ignore[return-value]
    return None


REPLICA_KEY = web.AppKey("replica", Replica)


def build_app(settings: Sim, *, replica: str = "sim-0") -> web.Application:
    """The sim as an aiohttp application; ``app[REPLICA_KEY]`` is its state."""
    state = Replica(settings, replica)
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[REPLICA_KEY] = state
    app.router.add_get("/v1/models", state.list_models)
    app.router.add_post("/v1/chat/completions", state.chat)
    app.router.add_post("/v1/embeddings", state.embed)
    app.router.add_get("/health", state.health)
    app.router.add_get("/sim/stats", state.get_stats)
    app.router.add_post("/sim/stats/reset", state.reset_stats)
    app.router.add_post("/sim/faults", state.set_faults)
    app.router.add_delete("/sim/faults", state.clear_faults)
    app.router.add_post("/reset_prefix_cache", state.reset_prefix_cache)
    app.on_shutdown.append(state.on_shutdown)
    return app


async def serve(settings: Sim, *, replica: str = "sim-0") -> tuple[web.AppRunner, int]:
    """Start the sim on ``settings.host:settings.port`` (0 picks a free port); returns the runner and the port."""
    runner = web.AppRunner(
        build_app(settings, replica=replica),
        access_log=None,
        # Cancel a handler when its client disconnects, so abandoned requests stop generating.
        handler_cancellation=True,
        # Streams in flight at shutdown are simulated work; do not hold the exit for them.
        shutdown_timeout=2.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port, backlog=4096)
    await site.start()
    port = int(runner.addresses[0][1])
    return runner, port


def run(settings: Sim) -> None:
    """Serve the sim until SIGINT or SIGTERM, on uvloop when it is installed."""

    async def main() -> None:
        runner, port = await serve(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not on Windows' default loop
                pass
        log.info("sluice sim listening on http://%s:%d models=%s", settings.host, port, ",".join(settings.models))
        print(f"sluice sim listening on http://{settings.host}:{port}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
