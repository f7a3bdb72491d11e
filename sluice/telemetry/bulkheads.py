"""Each upstream's bulkhead, read at scrape time: requests in flight, requests waiting in its line, its bound."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# (upstream, in flight, queued, bound on in flight) of every upstream
Bulkheads = list[tuple[str, int, int, int]]


class BulkheadCollector(Collector):
    """``sluice_upstream_in_flight``, ``sluice_upstream_queued`` and ``sluice_upstream_max_in_flight`` by upstream."""

    def __init__(self, read: Callable[[], Bulkheads]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        busy = GaugeMetricFamily("sluice_upstream_in_flight", "Requests in flight to the upstream (its bulkhead's "
                                 "places taken).", labels=["upstream"])
        queued = GaugeMetricFamily("sluice_upstream_queued", "Requests waiting in the upstream's bulkhead line.",
                                   labels=["upstream"])
        bound = GaugeMetricFamily("sluice_upstream_max_in_flight", "The bulkhead's bound on requests in flight.",
                                  labels=["upstream"])
        for upstream, n, q, limit in self._read():
            busy.add_metric([upstream], float(n))
            queued.add_metric([upstream], float(q))
            bound.add_metric([upstream], float(limit))
        yield busy
        yield queued
        yield bound

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
