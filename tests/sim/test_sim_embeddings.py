"""Embeddings: deterministic unit vectors of the configured size, floats or base64, all input shapes."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time

from sim_harness import RunningSim, StartSim


async def test_vectors_have_the_configured_dimensions_and_unit_length(start_sim: StartSim) -> None:
    sim = await start_sim(embedding_dimensions=48)
    reply = await sim.client().embeddings.create(model="sim-embed", input=["alpha", "beta gamma"], encoding_format="float")
    assert [d.index for d in reply.data] == [0, 1]
    for d in reply.data:
        assert len(d.embedding) == 48
        assert math.isclose(math.fsum(x * x for x in d.embedding), 1.0, rel_tol=1e-6)
    assert reply.usage.prompt_tokens == 3 and reply.usage.total_tokens == 3


async def test_same_input_gives_the_same_vector_and_different_inputs_differ(running: RunningSim) -> None:
    client = running.client()
    one = await client.embeddings.create(model="sim-embed", input="the same text", encoding_format="float")
    two = await client.embeddings.create(model="sim-embed", input=["the same text", "other text"], encoding_format="float")
    assert one.data[0].embedding == two.data[0].embedding
    assert two.data[0].embedding != two.data[1].embedding


async def test_base64_encoding_carries_the_same_float32_vector(running: RunningSim) -> None:
    raw = await running.http.post("/v1/embeddings", json={"model": "sim-embed", "input": "x", "encoding_format": "base64"})
    floats = await running.http.post("/v1/embeddings", json={"model": "sim-embed", "input": "x"})
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(packed) // 4}f", packed)
    expected = floats.json()["data"][0]["embedding"]
    assert len(decoded) == 64 and all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(decoded, expected))
    # The SDK asks for base64 by default and decodes it itself.
    sdk = await running.client().embeddings.create(model="sim-embed", input="x")
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(sdk.data[0].embedding, expected))


async def test_token_id_inputs_are_counted_by_length(running: RunningSim) -> None:
    client = running.client()
    single = await client.embeddings.create(model="sim-embed", input=[1, 2, 3, 4], encoding_format="float")
    assert len(single.data) == 1 and single.usage.prompt_tokens == 4
    batch = await client.embeddings.create(model="sim-embed", input=[[1, 2], [3, 4, 5]], encoding_format="float")
    assert len(batch.data) == 2 and batch.usage.prompt_tokens == 5


async def test_mixed_or_empty_inputs_and_unknown_models_are_refused(running: RunningSim) -> None:
    mixed = await running.http.post("/v1/embeddings", json={"model": "sim-embed", "input": ["a", 1]})
    empty = await running.http.post("/v1/embeddings", json={"model": "sim-embed", "input": []})
    unknown = await running.http.post("/v1/embeddings", json={"model": "nope", "input": "a"})
    assert (mixed.status_code, empty.status_code, unknown.status_code) == (400, 400, 404)
    assert mixed.json()["object"] == "error" and unknown.json()["code"] == 404


async def test_an_input_over_the_context_is_refused_as_vllm_refuses_it(running: RunningSim) -> None:
    before = (await running.http.get("/sim/stats")).json()["prompt_tokens"]
    for inp in [["fine", "word " * 32_769], [[1] * 32_769]]:  # texts, and token arrays: each input on its own
        r = await running.http.post("/v1/embeddings", json={"model": "sim-embed", "input": inp})
        assert r.status_code == 400 and "maximum context length is 32768 tokens" in r.json()["message"]
        assert "32769 tokens in the input" in r.json()["message"]
    ok = await running.http.post("/v1/embeddings", json={"model": "sim-embed", "input": [[1] * 32_768]})
    assert ok.status_code == 200 and (await running.http.get("/sim/stats")).json()["prompt_tokens"] == before + 32_768


async def test_serial_prefills_make_separate_calls_wait_as_a_batch_would(start_sim: StartSim) -> None:
    sim = await start_sim(prefill_ms_per_token=2.0, prefill_concurrency=1)
    body = {"model": "sim-embed", "input": [[1] * 50]}  # 100 ms of prefill each
    t0 = time.monotonic()
    await asyncio.gather(*(sim.http.post("/v1/embeddings", json=body) for _ in range(3)))
    assert time.monotonic() - t0 >= 0.3  # one at a time, as one call of the three inputs takes
