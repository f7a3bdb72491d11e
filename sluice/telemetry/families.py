"""Metric families by caller and route, spend, time per output token, limit decisions, and the
upstreams' breakers, folded from usage records in batches (never on the request path).

Cardinality is bounded: the first ``max_identities`` identities seen by this process keep their
own label, later ones fold into ``other``; the other labels come from config (teams, models,
versions, routes) and are capped as a last resort.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..core.types import UsageRecord
from .tally import Tally

OTHER = "other"
_MAX_CHILDREN = 20_000
_TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0)
_BREAKER_STATES = ("closed", "half-open", "open")

# (target, upstream, breaker state or None) of every routing target, read at scrape time
Health = list[tuple[str, str, str | None]]
# (target, replica, digest state) of every version with a digest on every replica of its upstream (routing.supply)
Supply = list[tuple[str, str, str]]
_SUPPLY_STATES = ("verified", "mismatch", "unreachable", "pending", "no_probe")


class CallerFamilies:
    """Requests, latency, tokens and spend by identity/team/model/version/route/status."""

    def __init__(self, r: CollectorRegistry, buckets: tuple[float, ...], max_identities: int,
                 health: Callable[[], Health] | None, live: CollectorRegistry | None = None) -> None:
        labels = ["identity", "team", "model", "version", "route", "status"]
        self.requests = Counter("sluice_caller_requests", "Data-plane requests by identity (bounded, then 'other'), "
                                "team, model, version, route and status.", labels, registry=r)
        self.errors = Counter("sluice_caller_errors", "Answers with status >= 400, by the same labels as "
                              "sluice_caller_requests.", labels, registry=r)
        self.latency = Histogram("sluice_route_duration_seconds", "Time from request to last byte by team, model, "
                                 "version, route and status.", labels[1:], buckets=buckets, registry=r)
        self.tpot = Histogram("sluice_time_per_output_token_seconds", "Streamed answers: time after the first token "
                              "divided by the tokens after it, by model.", ["model"], buckets=_TPOT_BUCKETS, registry=r)
        self.tokens = Counter("sluice_team_tokens", "Tokens by team, model and direction (input, cached_input, output).",
                              ["team", "model", "direction"], registry=r)
        self.spend = Counter("sluice_spend", "Spend in the configured currency by team and model (the ledger in "
                             "/admin/usage is exact; this is for graphs).", ["team", "model"], registry=r)
        self.decisions = Counter("sluice_limit_decisions", "Limit decisions: allowed, or throttled by which limit.",
                                 ["decision", "limit"], registry=r)
        self._allowed = self.decisions.labels("allowed", "")
        self._max_identities = max_identities
        self._identities: set[str] = set()
        self._children: dict[tuple, tuple] = {}
        if health is not None:  # read at scrape time: in ``live`` when given (see Metrics.render)
            (live or r).register(_HealthCollector(health))

    def _identity(self, identity: str | None) -> str:
        if identity is None:
            return ""
        if identity in self._identities:
            return identity
        if len(self._identities) < self._max_identities:
            self._identities.add(identity)
            return identity
        return OTHER

    def _labels(self, rec: UsageRecord, key: tuple) -> tuple:
        ident = self._identity(rec.identity_id)
        team, model, version, route = rec.team or "", rec.model or "", rec.version or "", rec.route or ""
        status = str(rec.status)
        c = (
            self.requests.labels(ident, team, model, version, route, status),
            self.errors.labels(ident, team, model, version, route, status) if rec.status >= 400 else None,
            self.latency.labels(team, model, version, route, status),
            self.tokens.labels(team, model, "input"),
            self.tokens.labels(team, model, "output"),
            self.tokens.labels(team, model, "cached_input"),
            self.spend.labels(team, model),
            self.tpot.labels(model),
            # past routing and not refused by a limit: the limits allowed it
            rec.route is not None and rec.status != 429,
        )
        if len(self._children) < _MAX_CHILDREN:
            self._children[key] = c
        return c

    def observe(self, records: Iterable[UsageRecord], tally: Tally) -> None:
        """Fold records into ``tally``; the caller (``Metrics.observe``) applies it once for both families."""
        inc, observe = tally.inc, tally.observe
        children = self._children
        allowed = 0
        for rec in records:
            key = (rec.identity_id, rec.team, rec.model, rec.version, rec.route, rec.status)
            c = children.get(key)
            if c is None:
                c = self._labels(rec, key)
            inc(c[0])
            if c[1] is not None:
                inc(c[1])
            observe(c[2], rec.latency_ms / 1000.0)
            if rec.prompt_tokens:
                inc(c[3], rec.prompt_tokens)
                if rec.cached_tokens:
                    inc(c[5], rec.cached_tokens)
            if rec.completion_tokens:
                inc(c[4], rec.completion_tokens)
                if rec.stream and rec.ttft_ms is not None and rec.completion_tokens > 1:
                    observe(c[7], (rec.latency_ms - rec.ttft_ms) / 1000.0 / (rec.completion_tokens - 1))
            if rec.cost_nanos:
                inc(c[6], rec.cost_nanos / 1e9)
            allowed += c[8]
        if allowed:
            inc(self._allowed, allowed)

    def throttled(self, limit: str) -> None:
        self.decisions.labels("throttled", limit).inc()


class _HealthCollector(Collector):
    """Breaker state per routing target and whether each upstream has a target taking traffic."""

    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def collect(self) -> Iterator[GaugeMetricFamily]:
        states = GaugeMetricFamily("sluice_breaker_state", "1 for the state each target's breaker is in.",
                                   labels=["target", "upstream", "state"])
        up = GaugeMetricFamily("sluice_upstream_healthy", "1 when some target on the upstream has its breaker "
                               "closed or half-open (no breaker counts as closed), else 0.", labels=["upstream"])
        healthy: dict[str, int] = {}
        try:
            rows = self._health()
        except Exception:  # a scrape must answer even while routing reloads
            rows = []
        for target, upstream, state in rows:
            state = state or "closed"
            for s in _BREAKER_STATES:
                states.add_metric([target, upstream, s], 1.0 if s == state else 0.0)
            healthy[upstream] = max(healthy.get(upstream, 0), int(state != "open"))
        for upstream, ok in sorted(healthy.items()):
            up.add_metric([upstream], float(ok))
        yield states
        yield up

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class SupplyCollector(Collector):
    """Per version with a digest and replica of its upstream: 1 for the state of its digest check (issue 28)."""

    def __init__(self, supply: Callable[[], Supply]) -> None:
        self._supply = supply

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("sluice_model_digest_state", "1 for the state of each registry version's digest on "
                                   "each replica of its upstream: verified, mismatch, unreachable, pending, no_probe "
                                   "(only verified replicas take the version's traffic).",
                                   labels=["target", "replica", "state"])
        try:
            rows = self._supply()
        except Exception:  # a scrape must answer even while routing reloads
            rows = []
        for target, replica, state in rows:
            for s in _SUPPLY_STATES:
                family.add_metric([target, replica, s], 1.0 if s == state else 0.0)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
