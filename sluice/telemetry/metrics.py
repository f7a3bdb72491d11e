"""Prometheus metrics, fed from usage records in batches so the request path only appends.

Served on the control plane at ``/metrics``; a scrape first folds in what is pending, so
what it shows is never older than the scrape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .bulkheads import BulkheadCollector, Bulkheads
from .families import CallerFamilies, Health, Supply, SupplyCollector
from .tally import Tally

from ..core.types import UsageRecord

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

CONTENT_TYPE = CONTENT_TYPE_LATEST
disable_created_metrics()  # the _created series double the output and nobody graphs them


class Metrics:
    """The gateway's metric families, in a registry of their own."""

    def __init__(self, *, max_identities: int = 200, health: Callable[[], Health] | None = None,
                 supply: Callable[[], Supply] | None = None, listeners: bool = False,
                 bulkheads: Callable[[], Bulkheads] | None = None) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # named data-plane listeners (issue 28): requests are counted per listener too; one unnamed listener
        # keeps the family's labels as they always were
        self._listeners = listeners
        self.requests = Counter("sluice_requests", "Data-plane requests by endpoint, model, status and listener."
                                if listeners else "Data-plane requests by endpoint, model and status.",
                                ["endpoint", "model", "status", *(["listener"] if listeners else [])], registry=r)
        self.latency = Histogram("sluice_request_duration_seconds", "Time from request to last byte, by model and status.",
                                 ["model", "status"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_latency = Histogram("sluice_upstream_duration_seconds", "Time spent on the upstream, by upstream.",
                                          ["upstream"], buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("sluice_time_to_first_token_seconds", "Time to first streamed token, by model.",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("sluice_tokens", "Tokens by model and direction (input, output).",
                              ["model", "direction"], registry=r)
        self.usage_pending = Gauge("sluice_usage_pending_records", "Usage records waiting to be written.", registry=r,
                                   multiprocess_mode="livesum")
        self.usage_dropped = Counter("sluice_usage_dropped_records", "Usage records dropped because the queue was full.", registry=r)
        self.usage_write_errors = Counter("sluice_usage_write_errors", "Failed batch writes of usage records.", registry=r)
        self.limit_events = Counter("sluice_limit_events", "Limit decisions and limiter trouble: rejected, "
                                    "backend_down, settle_failed; by limit.", ["kind", "limit"], registry=r)
        self._children: dict[tuple, tuple] = {}
        # MCP tool calls (issue 25): counted as they end, on the call path (one labelled inc and observe)
        self.mcp_calls = Counter("sluice_mcp_calls", "MCP tool calls by server, tool and decision "
                                 "(allow, block, hold, limited, error, refused).", ["server", "tool", "decision"], registry=r)
        self.mcp_latency = Histogram("sluice_mcp_call_duration_seconds", "MCP tool calls' time in sluice and upstream, "
                                     "by server and decision.", ["server", "decision"], buckets=_LATENCY_BUCKETS, registry=r)
        self._mcp_children: dict[tuple[str, str, str], tuple] = {}
        # embeddings micro-batching (issue 27): one observation per upstream call, of the requests it carried
        self.embed_batches = Histogram("sluice_embeddings_batch_requests", "Embeddings requests per upstream call of a "
                                       "batching upstream, by upstream (count: calls; sum: requests).", ["upstream"],
                                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        # by caller and route, spend, TPOT, limit decisions, breakers, process memory (issue 13)
        # Read at scrape time, not from counters: breaker state, upstream health, this process's memory.
        # Kept apart so that under --workers (multiprocess mode) the scrape still shows them.
        self._live = CollectorRegistry(auto_describe=True)
        self.callers = CallerFamilies(r, _LATENCY_BUCKETS, max_identities, health, live=self._live)
        ProcessCollector(registry=self._live)
        if supply is not None:
            self._live.register(SupplyCollector(supply))
        if bulkheads is not None:
            self._live.register(BulkheadCollector(bulkheads))

    def observe(self, records: Iterable[UsageRecord]) -> None:
        """Fold finished requests into the metric families (summed per series first: tally.py)."""
        children = self._children
        tally = Tally()
        inc, observe = tally.inc, tally.observe
        for rec in records:
            model = rec.model or ""
            key = (rec.endpoint, model, rec.status, rec.upstream, rec.listener)
            c = children.get(key)
            if c is None:
                status = str(rec.status)
                c = (
                    self.requests.labels(rec.endpoint, model, status, rec.listener or "") if self._listeners
                    else self.requests.labels(rec.endpoint, model, status),
                    self.latency.labels(model, status),
                    self.upstream_latency.labels(rec.upstream) if rec.upstream else None,
                    self.ttft.labels(model),
                    self.tokens.labels(model, "input"),
                    self.tokens.labels(model, "output"),
                )
                if len(children) < 10_000:  # bounded: label sets come from config, but stay safe
                    children[key] = c
            inc(c[0])
            observe(c[1], rec.latency_ms / 1000.0)
            if c[2] is not None and rec.upstream_ms is not None:
                observe(c[2], rec.upstream_ms / 1000.0)
            if rec.ttft_ms is not None:
                observe(c[3], rec.ttft_ms / 1000.0)
            if rec.prompt_tokens:
                inc(c[4], rec.prompt_tokens)
            if rec.completion_tokens:
                inc(c[5], rec.completion_tokens)
        self.callers.observe(records, tally)
        tally.apply()

    def mcp_call(self, server: str, tool: str, decision: str, seconds: float) -> None:
        """One MCP tool call ended (``tool``: its namespaced name; past 2,000 label sets, ``other``)."""
        key = (server, tool, decision)
        c = self._mcp_children.get(key)
        if c is None:
            if len(self._mcp_children) >= 2000:  # tool names come from upstream servers: bounded anyway
                key = (server, "other", decision)
            c = (self.mcp_calls.labels(*key), self.mcp_latency.labels(server, decision))
            if len(self._mcp_children) < 2000:
                self._mcp_children[key] = c
        c[0].inc()
        c[1].observe(seconds)

    def embeddings_call(self, upstream: str, requests: int) -> None:
        """A batching upstream was called with ``requests`` callers' embeddings (1: one that went alone)."""
        self.embed_batches.labels(upstream).observe(requests)

    def limit_event(self, kind: str, label: str) -> None:
        self.limit_events.labels(kind, label[:128]).inc()
        if kind == "rejected":
            self.callers.throttled(label[:128])

    def render(self) -> bytes:
        """This process's metrics; under ``sluice serve --workers N`` the sum over every worker
        (prometheus_client's multiprocess mode: each worker's values live in files of one run dir)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            gathered = CollectorRegistry()
            multiprocess.MultiProcessCollector(gathered)
            return generate_latest(gathered) + generate_latest(self._live)
        return generate_latest(self.registry) + generate_latest(self._live)
