"""Per-upstream bulkheads: a model whose backend stalls holds its own places and line, never another model's.

Model A's upstream hangs with its bulkhead full (16 in flight) and 500 requests waiting in its line
(``bulkhead_load``); model B, on its own upstream, keeps its latency and loses no request, and A's
overflow is answered at once with 503 ``upstream_busy`` and Retry-After, in the caller's API shape
(chat completions; Anthropic Messages as 529 ``overloaded_error``; Responses).
"""

from __future__ import annotations

import asyncio
import statistics
import time

import httpx
import pytest

from bulkhead_load import IN_FLIGHT, OVERFLOW, chat, gauge, start, stall_and_measure


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    g, a, b = start(tmp_path_factory.mktemp("bulkheads"))
    yield g, a
    g.stop()
    a.stop()
    b.stop()


@pytest.mark.timeout(300)  # the gateway's start (up to 60 s on the loaded machine), then ~25 s of B's rounds
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


@pytest.mark.timeout(300)  # the module's gateway may start here (up to 60 s on the loaded machine)
def test_every_place_comes_back_whether_a_request_times_out_in_flight_misses_its_line_deadline_or_its_caller_leaves(two):
    g, a = two
    headers = {"Authorization": f"Bearer {g.keys['caller']}"}
    a.faults(hang=True)  # model-c's upstream (A's sim): two places, a line of two, 1 s in line, 2.5 s read timeout

    async def scenario() -> tuple[list[int], list[str]]:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=None)) as c:
            async def post(timeout: float) -> int | str:
                try:
                    r = await c.post(g.v1 + "/chat/completions", json=chat("model-c"), headers=headers, timeout=timeout)
                except httpx.TimeoutException:
                    return "left"
                return r.status_code

            answered = await asyncio.gather(*[post(30) for _ in range(6)])
            left = await asyncio.gather(*[post(0.3) for _ in range(4)])  # two placed, two in line: all leave first
            return sorted(answered), left  # type: ignore[return-value]

    try:
        answered, left = asyncio.run(scenario())
        # two stalled in flight: 504 at the read timeout; two in line: 503 at their deadline; two over: 503 at once
        assert answered == [503, 503, 503, 503, 504, 504], answered
        assert left == ["left"] * 4
        deadline = time.monotonic() + 20
        while (gauge(g, "sluice_upstream_in_flight", "c"), gauge(g, "sluice_upstream_queued", "c")) != (0.0, 0.0):
            assert time.monotonic() < deadline, "a place was not given back"
            time.sleep(0.2)
    finally:
        a.clear_faults()
    r = httpx.post(g.v1 + "/chat/completions", json=chat("model-c"), headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    with httpx.stream("POST", g.v1 + "/chat/completions", json={**chat("model-c"), "stream": True}, headers=headers,
                      timeout=30) as s:
        assert s.status_code == 200 and b"[DONE]" in s.read()
    assert gauge(g, "sluice_upstream_in_flight", "c") == 0.0  # a stream's place is back once it has ended
