"""A batch tallied and applied once per series gives the exposition that observing every value
one by one gives: same series, bucket counts (values on a bound included), sums and counters."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from sluice.telemetry.tally import Tally

BOUNDS = (0.001, 0.01, 0.1, 1.0, 10.0)


def families() -> tuple[CollectorRegistry, Counter, Histogram]:
    r = CollectorRegistry()
    return r, Counter("c", "c", ["k"], registry=r), Histogram("h", "h", ["k"], buckets=BOUNDS, registry=r)


def test_a_tallied_batch_exposes_exactly_what_observing_one_by_one_does() -> None:
    rnd = random.Random(3)
    # values on every bound, between them, past the last, zero and negative
    values = list(BOUNDS) + [0.0, -0.5, 1e6] + [rnd.choice(BOUNDS) * rnd.uniform(0.5, 1.5) for _ in range(2000)]
    labels = [rnd.choice("abc") for _ in values]

    r1, c1, h1 = families()
    for k, v in zip(labels, values):
        c1.labels(k).inc(3)
        h1.labels(k).observe(v)

    r2, c2, h2 = families()
    tally = Tally()
    for k, v in zip(labels, values):
        tally.inc(c2.labels(k), 3)
        tally.observe(h2.labels(k), v)
    assert generate_latest(r2) != generate_latest(r1)  # nothing is applied before apply()
    tally.apply()

    assert generate_latest(r2) == generate_latest(r1)
    tally.apply()  # applied once: a second apply adds nothing
    assert generate_latest(r2) == generate_latest(r1)
