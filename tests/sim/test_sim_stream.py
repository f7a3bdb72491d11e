"""Streaming chat completions: SSE framing, one chunk per token, usage, pacing, disconnects."""

from __future__ import annotations

import asyncio
import json
import time

from sim_harness import RunningSim, StartSim, user


async def test_stream_yields_one_content_chunk_per_token_then_usage(running: RunningSim) -> None:
    stream = await running.client().chat.completions.create(
        model="sim-small", messages=user("Hello"), max_tokens=5, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    first, *rest = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    content = [c for c in rest if c.choices and c.choices[0].delta.content]
    assert len(content) == 5
    finishes = [c.choices[0].finish_reason for c in rest if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 5 and usage_chunk.usage.prompt_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_without_include_usage_sends_no_usage_chunk(running: RunningSim) -> None:
    stream = await running.client().chat.completions.create(model="sim-small", messages=user("Hello"), max_tokens=3, stream=True)
    chunks = [c async for c in stream]
    assert all(c.usage is None and c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_streamed_text_equals_the_non_streamed_text(running: RunningSim) -> None:
    client = running.client()
    whole = await client.chat.completions.create(model="sim-small", messages=user("Same question"), max_tokens=9)
    stream = await client.chat.completions.create(model="sim-small", messages=user("Same question"), max_tokens=9, stream=True)
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert streamed == whole.choices[0].message.content


async def test_wire_format_is_data_events_ending_in_done(start_sim: StartSim) -> None:
    for decode_ms in (0.0, 1.0):  # the coalesced zero-delay path and the paced path frame identically
        sim = await start_sim(decode_ms_per_token=decode_ms)
        raw = await sim.http.post(
            "/v1/chat/completions",
            json={"model": "sim-small", "messages": user("Hi"), "max_tokens": 3, "stream": True,
                  "stream_options": {"include_usage": True}},
        )
        assert raw.headers["content-type"].startswith("text/event-stream")
        events = raw.text.split("\n\n")
        assert events[-1] == "" and events[-2] == "data: [DONE]"
        payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
        assert all(e.startswith("data: {") for e in events[:-2])
        assert len(payloads) == 1 + 3 + 1 + 1  # role, tokens, finish, usage
        assert {p["id"] for p in payloads} == {payloads[0]["id"]}
        assert all(p["object"] == "chat.completion.chunk" for p in payloads)
        assert payloads[1]["choices"][0] == {
            "index": 0, "delta": {"content": payloads[1]["choices"][0]["delta"]["content"]},
            "logprobs": None, "finish_reason": None,
        }


async def test_tokens_are_paced_by_the_decode_delay(start_sim: StartSim) -> None:
    sim = await start_sim(decode_ms_per_token=20.0)
    stream = await sim.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=11, stream=True)
    arrivals: list[float] = []
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.perf_counter())
    assert len(arrivals) == 11
    span = arrivals[-1] - arrivals[0]
    # Ten gaps of 20 ms: tokens arrive spread out, not in one burst at the end. The sim sleeps to
    # deadlines, so a loaded machine delays the last token, not each gap; only a pace several
    # times wrong passes the upper bound.
    assert 0.18 <= span < 1.0
    assert arrivals[1] - arrivals[0] >= 0.01


async def test_client_disconnect_mid_stream_stops_generation_and_is_counted(start_sim: StartSim) -> None:
    sim = await start_sim(decode_ms_per_token=20.0)
    stream = await sim.client().chat.completions.create(
        model="sim-small", messages=user("Hi"), max_tokens=200, stream=True, extra_body={"ignore_eos": True}
    )
    seen = 0
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen == 3:
                break
    await stream.close()
    for _ in range(100):
        stats = await sim.stats()
        if stats["client_disconnects"] == 1 and stats["in_flight"] == 0:
            break
        await asyncio.sleep(0.02)
    assert stats["client_disconnects"] == 1 and stats["in_flight"] == 0
    assert stats["streams_completed"] == 0
    # Generation stopped near where the client left, far short of the 200 tokens asked for.
    assert stats["completion_tokens"] < 30
