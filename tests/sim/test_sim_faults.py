"""Faults injected at runtime: errors, rates, delays, cut streams, hangs; cleared on DELETE."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from sim_harness import RunningSim, user

try:  # the SDK's own HTTP stack, when it is not httpx
    import httpx2

    TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover
    TRANSPORT_ERRORS = (httpx.HTTPError,)


async def test_error_count_fails_the_next_request_then_recovers(running: RunningSim) -> None:
    await running.faults(error_status=500, error_count=1)
    client = running.client()
    with pytest.raises(openai.InternalServerError) as err:
        await client.chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=2)
    assert err.value.status_code == 500
    assert err.value.body == {
        "object": "error", "message": "injected fault: status 500", "type": "InternalServerError", "param": None, "code": 500,
    }
    ok = await client.chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=2)
    assert ok.choices[0].message.content
    stats = await running.stats()
    assert stats["errors_injected"] == 1 and stats["faults"]["error_count_remaining"] == 0


async def test_error_body_is_vllm_shaped_and_429_carries_retry_after(running: RunningSim) -> None:
    await running.faults(error_status=429, error_count=1)
    raw = await running.http.post("/v1/chat/completions", json={"model": "sim-small", "messages": user("Hi")})
    assert raw.status_code == 429 and raw.headers["retry-after"] == "1"
    assert raw.json() == {"object": "error", "message": raw.json()["message"], "type": "RateLimitError",
                          "param": None, "code": 429}


async def test_an_injected_429_or_503_carries_the_retry_after_the_fault_names(running: RunningSim) -> None:
    for status in (429, 503):
        await running.faults(error_status=status, error_count=1, retry_after=7)
        raw = await running.http.post("/v1/chat/completions", json={"model": "sim-small", "messages": user("Hi")})
        assert raw.status_code == status and raw.headers["retry-after"] == "7"


async def test_error_status_alone_fails_every_request_until_cleared(running: RunningSim) -> None:
    await running.faults(error_status=503)
    client = running.client()
    for _ in range(3):
        with pytest.raises(openai.APIStatusError) as err:
            await client.chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1)
        assert err.value.status_code == 503
    await running.clear_faults()
    assert (await client.chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1)).choices


async def test_error_rate_fails_about_that_share_of_requests(running: RunningSim) -> None:
    await running.faults(error_status=500, error_rate=0.5)
    statuses = [
        (await running.http.post("/v1/chat/completions", json={"model": "sim-small", "messages": user("Hi"), "max_tokens": 1})).status_code
        for _ in range(200)
    ]
    failed = statuses.count(500)
    assert 60 <= failed <= 140 and statuses.count(200) == 200 - failed


async def test_faults_apply_to_embeddings_too(running: RunningSim) -> None:
    await running.faults(error_status=500, error_count=1)
    with pytest.raises(openai.InternalServerError):
        await running.client().embeddings.create(model="sim-embed", input="x")
    assert (await running.client().embeddings.create(model="sim-embed", input="x")).data


async def test_delay_is_added_before_the_answer(running: RunningSim) -> None:
    await running.faults(delay_ms=200)
    start = time.perf_counter()
    await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1)
    assert time.perf_counter() - start >= 0.19


async def test_disconnect_after_three_chunks_breaks_the_sdk_stream(running: RunningSim) -> None:
    await running.faults(disconnect_after_chunks=3)
    stream = await running.client().chat.completions.create(
        model="sim-small", messages=user("Hi"), max_tokens=10, stream=True
    )
    content: list[str] = []
    with pytest.raises((openai.APIError, *TRANSPORT_ERRORS)):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                content.append(chunk.choices[0].delta.content)
    assert len(content) == 3
    stats = await running.stats()
    assert stats["streams_cut"] == 1 and stats["streams_completed"] == 0
    await running.clear_faults()
    stream = await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=10, stream=True)
    assert len([c async for c in stream if c.choices and c.choices[0].delta.content]) == 10


async def test_hang_never_answers_so_the_client_times_out(running: RunningSim) -> None:
    await running.faults(hang=True)
    client = running.client(timeout=0.5)
    start = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        await client.chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1)
    assert 0.45 <= time.perf_counter() - start < 3.0
    # The abandoned request is released once its client goes away.
    for _ in range(100):
        if (stats := await running.stats())["in_flight"] == 0:
            break
        await asyncio.sleep(0.02)
    assert stats["in_flight"] == 0 and stats["client_disconnects"] == 1
    await running.clear_faults()
    assert (await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1)).choices


async def test_invalid_fault_specs_are_refused(running: RunningSim) -> None:
    for bad in ({"error_rate": 1.5}, {"error_status": 200}, {"explode": True}):
        assert (await running.http.post("/sim/faults", json=bad)).status_code == 400
    assert (await running.stats())["faults"]["error_status"] is None


async def test_a_hung_request_does_not_hold_up_shutdown(running: RunningSim) -> None:
    await running.faults(hang=True)
    pending = asyncio.ensure_future(
        running.client(timeout=30.0).chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1)
    )
    await asyncio.sleep(0.1)
    assert (await running.stats())["in_flight"] == 1
    start = time.perf_counter()
    await running.runner.cleanup()
    assert time.perf_counter() - start < 1.0
    # The client is dropped without an answer.
    with pytest.raises(openai.APIConnectionError):
        await asyncio.wait_for(pending, 5.0)
