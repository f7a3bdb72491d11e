"""Per-upstream bulkheads: a model whose backend stalls holds its own places and line, never another model's.

Model A's upstream hangs with its bulkhead full (16 in flight) and 500 requests waiting in its line
(``bulkhead_load``); model B, on its own upstream, keeps its latency and loses no request, and A's
overflow is answered at once with 503 ``upstream_busy`` and Retry-After, in the caller's API shape
(chat completions; Anthropic Messages as 529 ``overloaded_error``; Responses).
"""

from __future__ import annotations

import asyncio
import statistics

import pytest

from bulkhead_load import IN_FLIGHT, OVERFLOW, start, stall_and_measure


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    g, a, b = start(tmp_path_factory.mktemp("bulkheads"))
    yield g, a
    g.stop()
    a.stop()
    b.stop()


def test_a_stalled_upstream_with_500_queued_leaves_another_models_latency_and_answers_its_overflow_at_once(two):
    g, a = two
    out = asyncio.run(stall_and_measure(g, a, rounds=5, per_round=100))

    assert not out.b_failed, out.b_failed  # no request of B failed, loaded or not
    base, under = statistics.median(out.unloaded), statistics.median(out.loaded)
    # The bound is 20% (bench/bench_bulkhead.py holds it, at more rounds); beside the parallel suite
    # on two shared cores one round's p99 of 100 requests moves by more than that with A idle, so the test
    # asks for 50%: still far below what one shared line would cost B (a wait behind 500 stalled requests).
    assert under <= 1.5 * base, (base, under, out.unloaded, out.loaded)

    assert out.in_flight == IN_FLIGHT
    # A's overflow, and only it, was answered: at once, 503 upstream_busy with Retry-After
    assert len(out.overflow) == OVERFLOW, [(s, b) for _, s, _, b in out.overflow]
    for took, status, retry_after, body in out.overflow:
        assert status == 503 and int(retry_after) >= 1, (status, retry_after, body)
        assert body["error"]["code"] == "upstream_busy", body
        assert took < 10, took
    status, retry_after, body = out.messages
    assert status == 529 and int(retry_after) >= 1 and body["type"] == "error", out.messages
    assert body["error"]["type"] == "overloaded_error", body
    status, retry_after, body = out.responses
    assert status == 503 and int(retry_after) >= 1 and body["error"]["code"] == "upstream_busy", out.responses
