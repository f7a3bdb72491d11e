"""OpenTelemetry traces of data-plane requests: one server span per request, a child span per
pipeline stage and per upstream attempt (target, retry or fallback and why), GenAI semantic
convention attributes, the W3C ``traceparent`` accepted from callers and sent upstream.

Off unless ``telemetry.tracing.endpoint`` is set: then the request path pays one ``is None``
check. When on, a request that nothing can sample builds nothing (one header lookup, one
``random()``): requests are sampled at ``ratio``, a caller's unsampled ``traceparent`` is never
traced, and a caller's sampled one is followed only after authentication, at most
``caller_sampled_per_minute`` times per identity (so keyless requests cannot fill the exporter's
queue with spans of their choosing). A request that may be traced is authenticated first and the
rest decided after; its trace still starts when the request did, with the authenticate span
at the times it was measured. No prompt or completion text goes into a span.

A sampled request records plain values while it runs (ids, clock readings, one attribute dict
per span) and, when it ends, hands its spans to the SDK's ``BatchSpanProcessor`` as the
SDK's own ``ReadableSpan``: what ``Span.end()`` would hand it, without a ``Span``, its lock,
its bounded attribute map and a context object per span (measured: 30 µs a span against 3).
The OTLP/HTTP exporter encodes and posts them on the processor's thread, from a bounded queue.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.telemetry_config import Tracing
from ..core.types import API_OF

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("sluice.tracing")
# OpenTelemetry's GenAI operation names, by endpoint (chat completions and Anthropic's messages: "chat")
_OPERATIONS = {"embeddings": "embeddings", "completions": "text_completion"}
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
_now = time.time_ns

# The SDK is imported when the first Tracer is built: with tracing off, none of it (45 ms at start).
SpanContext: Any = None
ReadableSpan: Any = None
_SAMPLED: Any = None
_ERROR: Any = None
_UNSET = _SERVER = _CLIENT = _INTERNAL = _ERROR


def _import_sdk() -> None:
    global SpanContext, ReadableSpan, _SAMPLED, _ERROR, _UNSET, _SERVER, _CLIENT, _INTERNAL
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    _SAMPLED = TraceFlags(TraceFlags.SAMPLED)
    _ERROR, _UNSET = Status(StatusCode.ERROR), Status(StatusCode.UNSET)
    _SERVER, _CLIENT, _INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL


class _Choices(msgspec.Struct):
    finish_reason: str | None = None


class _Answer(msgspec.Struct):
    choices: list[_Choices] = []


_answer = msgspec.json.Decoder(_Answer)


class Tracer:
    """Decides per request whether to trace and starts the request's ``RequestTrace``."""

    def __init__(self, cfg: Tracing, follow: Callable[[str], bool] | None = None) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        _import_sdk()

        class _Resource(Resource):
            """A resource that hashes once: the OTLP encoder hashes every span's resource to group
            them, and ``Resource.__hash__`` dumps its attributes to JSON each time (5-7 µs a span)."""

            def __init__(self, resource: Resource) -> None:
                super().__init__(resource.attributes, resource.schema_url)
                self._hash = super().__hash__()

            def __hash__(self) -> int:
                return self._hash

        # The SDK warns per span once its queue is full (a collector that is down) and its exporter's
        # retry warnings name the collector's URL: only errors are logged.
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)
        self._ratio = cfg.ratio
        self._random = random.random
        # identity id -> whether its sampled flag may be honoured now (one more counted); None: never
        self._follow = follow
        self._timeout_s = cfg.timeout_s
        resource = _Resource(Resource.create({"service.name": cfg.service_name}))
        self.provider: TracerProvider = TracerProvider(resource=resource)
        exporter = OTLPSpanExporter(endpoint=cfg.endpoint, headers=cfg.headers or None, timeout=cfg.timeout_s)
        # A bounded queue (the oldest spans go when it is full: a collector that is down or hangs
        # costs spans, not memory); one export at a time, each bounded by the exporter's timeout.
        # Batches of up to half the queue, every 5 s: a POST costs ~2 ms of CPU, so at 1% of
        # 2,000 req/s (160 spans/s) one export per 5 s instead of one per 512 spans.
        self._processor = BatchSpanProcessor(exporter, max_queue_size=cfg.max_queue_spans, schedule_delay_millis=5000,
                                             max_export_batch_size=cfg.max_queue_spans // 2,
                                             export_timeout_millis=cfg.timeout_s * 1000)
        self.provider.add_span_processor(self._processor)
        self._scope = InstrumentationScope("sluice")
        self._resource = resource
        self._span_id = self.provider.id_generator.generate_span_id
        self.trace_id = self.provider.id_generator.generate_trace_id
        self._stage_names: dict[type, str] = {}

    def sampling(self, headers: Any) -> tuple[Any, bool] | None:
        """Before authentication: what may sample this request, as (the caller's sampled parent or
        None, whether ``ratio`` chose it); None when nothing can (the request then builds nothing)."""
        parent = None
        tp = headers.get("traceparent")
        if tp is not None:
            m = _TRACEPARENT.fullmatch(tp.strip().lower())
            if m and m[1] != "ff" and m[2] != _ZERO_TRACE and m[3] != _ZERO_SPAN:
                if not int(m[4], 16) & 1:
                    return None  # the caller decided: not sampled
                if self._follow is not None:
                    parent = SpanContext(int(m[2], 16), int(m[3], 16), is_remote=True, trace_flags=_SAMPLED)
        chosen = self._ratio > 0.0 and self._random() < self._ratio
        if parent is None and not chosen:
            return None
        return parent, chosen

    async def run(self, name: str, sampling: tuple[Any, bool], stages: Any, ctx: Any) -> None:
        """Run the stages of a request ``sampling`` says may be traced; the first stage authenticates.

        The decision waits for authentication: a caller's sampled flag is honoured only for an
        authenticated identity within its allowance, a request ``ratio`` chose is traced either way
        (a refused one as a trace of its own, never the caller's). Once decided, the trace covers
        the whole request: it starts when authentication did, whose span keeps its measured times.
        """
        parent, chosen = sampling
        authenticate = stages[0]
        start = _now()
        try:
            authenticate(ctx)  # never waits (pipeline.stages.authenticate)
        except BaseException as exc:
            if chosen:
                ctx.trace = trace = RequestTrace(self, name, None, start)
                trace.stage(authenticate, start, _now(), exc)
            raise
        end = _now()
        if chosen or self._follow(ctx.principal.identity_id):  # type: ignore[misc]  # parent is set: so is _follow
            ctx.trace = trace = RequestTrace(self, name, parent, start)
            trace.stage(authenticate, start, end)
            await trace.run(stages[1:], ctx)
        else:
            for stage in stages[1:]:
                if (waiting := stage(ctx)) is not None:  # None: done at once (pipeline.endpoints.Stage)
                    await waiting

    def child(self, trace_id: int) -> Any:
        """The context of a new span of this trace (sampled: it exists only because it is)."""
        return SpanContext(trace_id, self._span_id(), False, _SAMPLED)

    def single(self, name: str, sampling: tuple[Any, bool], identity_id: str, attributes: dict[str, Any],
               error: str | None, start: int, end: int) -> None:
        """One server span for a request that is not a pipeline run (an MCP tool call), sampled as ``run`` decides:
        ``ratio`` chose it, or the caller's sampled parent is followed for this (authenticated) identity."""
        parent, chosen = sampling
        follow = parent is not None and self._follow is not None and self._follow(identity_id)
        if not chosen and not follow:
            return
        trace_parent = parent if follow else None
        if error is not None:
            attributes["error.type"] = error
        context = self.child(trace_parent.trace_id if trace_parent is not None else self.trace_id())
        self.emit(name, context, trace_parent, _SERVER, attributes, _ERROR if error is not None else _UNSET, start, end)

    def stage_name(self, stage: Any) -> str:
        """The span name of a pipeline stage (named once per stage class)."""
        kind = type(stage)
        name = self._stage_names.get(kind)
        if name is None:
            name = self._stage_names[kind] = "stage " + kind.__name__.lower()
        return name

    def emit(self, name: str, context: Any, parent: Any, kind: Any, attributes: dict[str, Any] | None,
             status: Any, start: int, end: int) -> None:
        """Hand one finished span to the batch processor, as the SDK's ``Span.end()`` does."""
        self._processor.on_end(ReadableSpan(name, context, parent, self._resource, attributes, kind=kind,
                                            status=status, start_time=start, end_time=end,
                                            instrumentation_scope=self._scope))

    def shutdown(self) -> None:
        """Export what is queued and stop, within about the exporter's timeout even if the collector
        hangs (the SDK's own shutdown would wait up to 30 s and one timeout per queued batch)."""
        done = threading.Thread(target=self._shutdown, name="sluice-trace-shutdown", daemon=True)
        done.start()
        done.join(self._timeout_s + 1.0)
        if done.is_alive():
            log.warning("trace export at shutdown did not finish within %.0f s: spans dropped", self._timeout_s + 1.0)

    def _shutdown(self) -> None:
        try:
            self.provider.shutdown()
        except Exception as exc:  # a collector that is gone must not stop shutdown
            log.warning("trace export at shutdown failed: %s", type(exc).__name__)


class RequestTrace:
    """The spans of one sampled request: recorded as plain values, built when the request ends."""

    __slots__ = ("_tracer", "_name", "_parent", "_root", "_start", "_done", "_attempt", "reasons")

    def __init__(self, tracer: Tracer, name: str, parent: Any, start: int) -> None:
        self._tracer = tracer
        self._name = name
        self._parent = parent
        self._root = tracer.child(parent.trace_id if parent is not None else tracer.trace_id())
        self._start = start  # when the request began (ns): before its trace was decided
        # finished children: (name, context, kind, attributes, status, start, end)
        self._done: list[tuple[str, Any, Any, dict[str, Any] | None, Any, int, int]] = []
        self._attempt: tuple[str, Any, dict[str, Any], int] | None = None
        self.reasons: list[str] = []  # finish reasons of a non-streamed answer

    async def run(self, stages: Any, ctx: Any) -> None:
        """Run the pipeline's stages, each in a child span named for its stage."""
        t0 = _now()
        for stage in stages:
            try:
                if (waiting := stage(ctx)) is not None:
                    await waiting
            except BaseException as exc:
                self.stage(stage, t0, _now(), exc)
                raise
            t1 = _now()
            self.stage(stage, t0, t1)
            t0 = t1

    def stage(self, stage: Any, start: int, end: int, error: BaseException | None = None) -> None:
        """A stage's span, at the times it was measured (also for one that ran before the trace was decided)."""
        tracer = self._tracer
        attrs, status = None, _UNSET
        if error is not None:
            attrs, status = {"error.type": getattr(error, "code", None) or type(error).__name__}, _ERROR
        self._done.append((tracer.stage_name(stage), tracer.child(self._root.trace_id), _INTERNAL, attrs, status,
                           start, end))

    def attempt(self, ctx: Any) -> dict[str, str]:
        """Start the span of an upstream attempt; the headers that carry it upstream."""
        self.end_attempt(None)
        target = ctx.target
        attrs: dict[str, Any] = {"sluice.target": target.name, "sluice.upstream": target.upstream,
                                 "sluice.model.version": target.version, "gen_ai.request.model": target.model,
                                 "server.address": target.upstream}
        tried = ctx.decision.attempts if ctx.decision is not None else ()
        attrs["sluice.attempt"] = len(tried) + 1
        if tried:
            prev_target, reason, _ = tried[-1]
            attrs["sluice.attempt.kind"] = "retry" if prev_target == target.name else "fallback"
            attrs["sluice.attempt.reason"] = reason
        sc = self._tracer.child(self._root.trace_id)
        self._attempt = ("upstream " + target.upstream, sc, attrs, _now())
        return {"traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01"}

    def answered(self, body: bytes) -> None:
        """A non-streamed answer came: end the attempt, keep its finish reasons."""
        self.end_attempt(None)
        self.reasons = finish_reasons(body)

    def end_attempt(self, error: str | None) -> None:
        """End the current attempt's span (``error``: why it failed, None: it answered)."""
        attempt, self._attempt = self._attempt, None
        if attempt is None:
            return
        name, sc, attrs, start = attempt
        status = _UNSET
        if error is not None:
            attrs["error.type"] = error
            status = _ERROR
        self._done.append((name, sc, _CLIENT, attrs, status, start, _now()))

    def finish(self, ctx: Any, body: bytes | None = None) -> None:
        """End the request span with what it came to (GenAI usage, status, route; never text) and
        hand the request's spans to the exporter."""
        self.end_attempt(ctx.error_code if ctx.status >= 400 else None)
        end = _now()
        req = ctx.request
        attrs: dict[str, Any] = {"gen_ai.operation.name": _OPERATIONS.get(self._name, "chat")}
        model = getattr(req, "model", None)
        if model:
            attrs["gen_ai.request.model"] = model
        max_tokens = getattr(req, "max_tokens", None)
        if isinstance(max_tokens, int):
            attrs["gen_ai.request.max_tokens"] = max_tokens
        if ctx.target is not None:
            attrs["gen_ai.response.model"] = ctx.target.upstream_model
            attrs["gen_ai.system"] = ctx.target.upstream
        attrs["gen_ai.usage.input_tokens"] = ctx.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = ctx.completion_tokens
        if self.reasons:
            attrs["gen_ai.response.finish_reasons"] = tuple(self.reasons)
        attrs["http.response.status_code"] = ctx.status
        attrs["sluice.request_id"] = ctx.exchange.request_id
        attrs["sluice.stream"] = ctx.stream
        api = API_OF.get(self._name)
        if api is not None:
            attrs["sluice.api"] = api  # the client API that carried it: chat, messages, responses, completions
        p = ctx.principal
        if p is not None:
            attrs["sluice.identity"] = p.identity_name
            if p.team:
                attrs["sluice.team"] = p.team
        if ctx.decision is not None:
            attrs["sluice.route"] = ctx.decision.route.name
        status = _UNSET
        if ctx.status >= 400:
            attrs["error.type"] = ctx.error_code or str(ctx.status)
            if ctx.status >= 500:
                status = _ERROR
        emit, root = self._tracer.emit, self._root
        emit(self._name, root, self._parent, _SERVER, attrs, status, self._start, end)
        for name, sc, kind, a, st, start, stop in self._done:
            emit(name, sc, root, kind, a, st, start, stop)


def finish_reasons(body: bytes) -> list[str]:
    """The finish reasons of a non-streamed answer (read only for sampled requests)."""
    try:
        return [c.finish_reason for c in _answer.decode(body).choices if c.finish_reason]
    except msgspec.DecodeError:
        return []


def build(cfg: Tracing, follow: Callable[[str], bool] | None = None) -> Tracer | None:
    """The tracer the config asks for, or None (tracing off: the request path checks one attribute).
    ``follow``: whether an identity's sampled ``traceparent`` may be honoured now (None: never)."""
    if not cfg.endpoint:
        return None
    return Tracer(cfg, follow)
