"""OpenTelemetry traces of data-plane requests: one server span per request, a child span per
pipeline stage and per upstream attempt (target, retry or fallback and why), GenAI semantic
convention attributes, the W3C ``traceparent`` accepted from callers and sent upstream.

Off unless ``telemetry.tracing.endpoint`` is set: then the request path pays one ``is None``
check. When on, the sampling decision comes first and unsampled requests build nothing: a
caller's sampled ``traceparent`` is always followed, an unsampled one never, and requests
without one are sampled at ``ratio``. No prompt or completion text goes into a span.
Spans are exported over OTLP/HTTP by the SDK's batch processor on its own thread.
"""

from __future__ import annotations

import logging
import random
import re
from typing import TYPE_CHECKING, Any

import msgspec

from ..core.telemetry_config import Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("sluice.tracing")
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


class _Choices(msgspec.Struct):
    finish_reason: str | None = None


class _Answer(msgspec.Struct):
    choices: list[_Choices] = []


_answer = msgspec.json.Decoder(_Answer)


class Tracer:
    """Decides per request whether to trace and starts the request's ``RequestTrace``."""

    def __init__(self, cfg: Tracing, provider: TracerProvider | None = None) -> None:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The SDK warns per span once its queue is full (a collector that is down) and its exporter's
        # retry warnings name the collector's URL: only errors are logged.
        logging.getLogger("opentelemetry").setLevel(logging.ERROR)
        self._ratio = cfg.ratio
        self._random = random.random
        self._trace = trace
        if provider is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            from opentelemetry.sdk.trace.sampling import ALWAYS_ON

            # sampling is decided in begin(); the SDK's own parent-based sampler would only repeat it
            provider = TracerProvider(resource=Resource.create({"service.name": cfg.service_name}), sampler=ALWAYS_ON)
            exporter = OTLPSpanExporter(endpoint=cfg.endpoint, headers=cfg.headers or None, timeout=cfg.timeout_s)
            provider.add_span_processor(BatchSpanProcessor(exporter, export_timeout_millis=cfg.timeout_s * 1000))
        self.provider = provider
        self._tracer = provider.get_tracer("sluice")

    def begin(self, name: str, headers: Any) -> RequestTrace | None:
        """A trace for this request, or None when it is not sampled (nothing is built then)."""
        parent = None
        tp = headers.get("traceparent")
        if tp is not None:
            m = _TRACEPARENT.fullmatch(tp.strip().lower())
            if m and m[1] != "ff" and m[2] != _ZERO_TRACE and m[3] != _ZERO_SPAN:
                if not int(m[4], 16) & 1:
                    return None  # the caller decided: not sampled
                t = self._trace
                parent = t.set_span_in_context(t.NonRecordingSpan(t.SpanContext(
                    int(m[2], 16), int(m[3], 16), is_remote=True, trace_flags=t.TraceFlags(1))))
        if parent is None and (self._ratio <= 0.0 or self._random() >= self._ratio):
            return None
        return RequestTrace(self._tracer, self._trace, name, parent)

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout) and stop."""
        try:
            self.provider.shutdown()
        except Exception as exc:  # a collector that is gone must not stop shutdown
            log.warning("trace export at shutdown failed: %s", type(exc).__name__)


class RequestTrace:
    """The spans of one sampled request."""

    __slots__ = ("_tracer", "_t", "root", "_ctx", "_attempt", "reasons")

    def __init__(self, tracer: Any, t: Any, name: str, parent: Any) -> None:
        self._tracer = tracer
        self._t = t
        self.root = tracer.start_span(name, context=parent, kind=t.SpanKind.SERVER,
                                      attributes={"gen_ai.operation.name": "chat" if "chat" in name else "embeddings"})
        self._ctx = t.set_span_in_context(self.root)
        self._attempt: Any = None
        self.reasons: list[str] = []  # finish reasons of a non-streamed answer

    async def run(self, stages: Any, ctx: Any) -> None:
        """Run the pipeline's stages, each in a child span named for its stage."""
        for stage in stages:
            span = self._tracer.start_span("stage " + type(stage).__name__.lower(), context=self._ctx)
            try:
                await stage(ctx)
            except BaseException as exc:
                span.set_attribute("error.type", getattr(exc, "code", None) or type(exc).__name__)
                span.set_status(self._t.Status(self._t.StatusCode.ERROR))
                raise
            finally:
                span.end()

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
        span = self._attempt = self._tracer.start_span("upstream " + target.upstream, context=self._ctx,
                                                       kind=self._t.SpanKind.CLIENT, attributes=attrs)
        sc = span.get_span_context()
        return {"traceparent": f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01"}

    def answered(self, body: bytes) -> None:
        """A non-streamed answer came: end the attempt, keep its finish reasons."""
        self.end_attempt(None)
        self.reasons = finish_reasons(body)

    def end_attempt(self, error: str | None) -> None:
        """End the current attempt's span (``error``: why it failed, None: it answered)."""
        span, self._attempt = self._attempt, None
        if span is None:
            return
        if error is not None:
            span.set_attribute("error.type", error)
            span.set_status(self._t.Status(self._t.StatusCode.ERROR))
        span.end()

    def finish(self, ctx: Any, body: bytes | None = None) -> None:
        """End the request span with what it came to: GenAI usage, status, route; never text."""
        self.end_attempt(ctx.error_code if ctx.status >= 400 else None)
        root = self.root
        req = ctx.request
        model = getattr(req, "model", None)
        if model:
            root.set_attribute("gen_ai.request.model", model)
        max_tokens = getattr(req, "max_tokens", None)
        if isinstance(max_tokens, int):
            root.set_attribute("gen_ai.request.max_tokens", max_tokens)
        if ctx.target is not None:
            root.set_attribute("gen_ai.response.model", ctx.target.upstream_model)
            root.set_attribute("gen_ai.system", ctx.target.upstream)
        root.set_attribute("gen_ai.usage.input_tokens", ctx.prompt_tokens)
        root.set_attribute("gen_ai.usage.output_tokens", ctx.completion_tokens)
        if self.reasons:
            root.set_attribute("gen_ai.response.finish_reasons", self.reasons)
        root.set_attribute("http.response.status_code", ctx.status)
        root.set_attribute("sluice.request_id", ctx.exchange.request_id)
        root.set_attribute("sluice.stream", ctx.stream)
        p = ctx.principal
        if p is not None:
            root.set_attribute("sluice.identity", p.identity_name)
            if p.team:
                root.set_attribute("sluice.team", p.team)
        if ctx.decision is not None:
            root.set_attribute("sluice.route", ctx.decision.route.name)
        if ctx.status >= 400:
            root.set_attribute("error.type", ctx.error_code or str(ctx.status))
            if ctx.status >= 500:
                root.set_status(self._t.Status(self._t.StatusCode.ERROR))
        root.end()


def finish_reasons(body: bytes) -> list[str]:
    """The finish reasons of a non-streamed answer (read only for sampled requests)."""
    try:
        return [c.finish_reason for c in _answer.decode(body).choices if c.finish_reason]
    except msgspec.DecodeError:
        return []


def build(cfg: Tracing) -> Tracer | None:
    """The tracer the config asks for, or None (tracing off: the request path checks one attribute)."""
    if not cfg.endpoint:
        return None
    return Tracer(cfg)
