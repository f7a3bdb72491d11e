"""The official openai SDK, sync and async, streaming and not, works unchanged through sluice."""

from __future__ import annotations

import base64
import struct

import httpx
import openai
import pytest


def test_sync_chat_completion_returns_text_and_usage(gw):
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"])
    r = client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "Hello there"}], max_tokens=8)
    assert r.choices[0].message.content
    assert r.usage.completion_tokens == 8
    assert r.usage.prompt_tokens > 0


def test_same_prompt_gives_same_text(gw):
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"])
    msgs = [{"role": "user", "content": "determinism please"}]
    a = client.chat.completions.create(model="sim-small", messages=msgs, max_tokens=6)
    b = client.chat.completions.create(model="sim-small", messages=msgs, max_tokens=6)
    assert a.choices[0].message.content == b.choices[0].message.content


async def test_async_stream_relays_every_token_and_usage_when_asked(gw):
    client = openai.AsyncOpenAI(base_url=gw.v1, api_key=gw.keys["app"])
    stream = await client.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "count"}], max_tokens=20,
        stream=True, stream_options={"include_usage": True},
    )
    content, usage = [], None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            content.append(chunk.choices[0].delta.content)
        if chunk.usage:
            usage = chunk.usage
    assert len(content) == 20
    assert usage is not None and usage.completion_tokens == 20


def test_stream_without_include_usage_carries_no_usage_chunk(gw):
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"])
    chunks = list(client.chat.completions.create(
        model="sim-small", messages=[{"role": "user", "content": "count"}], max_tokens=5, stream=True))
    assert all(c.usage is None for c in chunks)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5


def test_stream_events_arrive_as_produced_not_all_at_once(tmp_path_factory):
    """With a 40 ms decode delay, the first token must arrive long before the last."""
    from support import Sim, start_gateway

    tmp = tmp_path_factory.mktemp("slow")
    slow = Sim(tmp, **{"decode-ms": 40})
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": slow.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}])
    try:
        import time

        client = openai.OpenAI(base_url=g.v1, api_key=g.keys["a"])
        t0 = time.monotonic()
        arrivals = []
        for c in client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "x"}],
                                                max_tokens=10, stream=True):
            if c.choices and c.choices[0].delta.content:
                arrivals.append(time.monotonic() - t0)
        assert len(arrivals) == 10
        assert arrivals[-1] - arrivals[0] > 0.25  # spread over ~9 decode steps, not one burst
    finally:
        g.stop()
        slow.stop()


def test_embeddings_float_and_base64(gw):
    client = openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"])
    r = client.embeddings.create(model="sim-embed", input=["alpha", "beta"], encoding_format="float")
    assert len(r.data) == 2 and len(r.data[0].embedding) > 0
    assert r.usage.prompt_tokens > 0
    raw = httpx.post(gw.v1 + "/embeddings", headers={"Authorization": f"Bearer {gw.keys['app']}"},
                     json={"model": "sim-embed", "input": "alpha", "encoding_format": "base64"}).json()
    vec = base64.b64decode(raw["data"][0]["embedding"])
    floats = struct.unpack(f"<{len(vec) // 4}f", vec)
    assert floats == pytest.approx(r.data[0].embedding, rel=1e-5)


def test_models_lists_only_what_the_caller_may_use(gw):
    ids = {m.id for m in openai.OpenAI(base_url=gw.v1, api_key=gw.keys["app"]).models.list()}
    assert ids == {"sim-small", "sim-embed"}  # sim-prod is scoped but the caller is dev
    ids = {m.id for m in openai.OpenAI(base_url=gw.v1, api_key=gw.keys["prod-app"]).models.list()}
    assert ids == {"sim-small", "sim-embed", "sim-secret", "sim-prod"}


def test_health_and_readiness(gw):
    assert httpx.get(gw.url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(gw.url + "/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"


def test_every_answer_carries_a_request_id(gw):
    ok = gw.post("/v1/chat/completions", gw.keys["app"], json={"model": "sim-small", "messages": [{"role": "user", "content": "x"}]})
    bad = gw.post("/v1/chat/completions", None, json={})
    assert ok.headers["x-request-id"].startswith("req_")
    assert bad.headers["x-request-id"].startswith("req_")
    assert ok.headers["x-request-id"] != bad.headers["x-request-id"]
