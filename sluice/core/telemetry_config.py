"""Config of traces, metric cardinality and per-request logs (the ``telemetry`` section)."""

from __future__ import annotations

from typing import Annotated

import msgspec


class _Section(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Unknown keys are an error, as in every config section."""


class Tracing(_Section):
    """OpenTelemetry traces over OTLP/HTTP; off unless ``endpoint`` is set and ``ratio`` > 0."""

    endpoint: str | None = None  # e.g. http://collector:4318/v1/traces
    ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0  # share of requests sampled
    # A caller's sampled traceparent is honoured only once it has authenticated, and at most this many
    # times a minute per identity and process (a minute's worth at once); 0: never, ratio alone decides.
    caller_sampled_per_minute: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 60
    service_name: str = "sluice"
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0  # one export, retries included; and shutdown's wait
    # spans waiting for export; when the collector is slow or down the oldest are dropped, not kept
    max_queue_spans: Annotated[int, msgspec.Meta(ge=64, le=1_000_000)] = 2048
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # e.g. an API key of the collector


class Telemetry(_Section):
    """Metric label bounds, per-request log lines, traces."""

    max_identities: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 200  # then identity="other" in metrics
    request_log: bool = True  # one JSON line per request (logger sluice.request, level info), from the batch fold
    tracing: Tracing = msgspec.field(default_factory=Tracing)
