"""Embeddings micro-batching (issue 27, item 4): concurrent embeddings requests to one upstream model with the
same parameters go upstream as one call (the sim counts its calls); each caller gets exactly its own vectors in
its own order, its own usage (in the answer and in its usage record), and its own error when its input is the
one the upstream refuses. Requests whose parameters differ are never combined; an upstream without
``embeddings_batching`` sends each request alone."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

import sluice.sim
from support import Gateway, Sim, start_gateway, usage_rows

SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))
C = 64
WINDOW_MS = 20  # wide enough that a crowd started at once meets in one window on a loaded machine (the bench: 2)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("embbatch")
    sim = Sim(tmp, **{"base-ms": 30})  # each upstream call takes 30 ms: the crowd's requests overlap it
    batching = {"batch_window_ms": WINDOW_MS}
    g = start_gateway(
        tmp, upstreams=[{"name": "batched", "base_url": sim.url + "/v1", "embeddings_batching": batching},
                        {"name": "plain", "base_url": sim.url + "/v1"}],
        models=[{"name": "e-batch", "upstream": "batched", "upstream_model": "sim-embed", "tokenizer": SIM_TOKENIZER},
                {"name": "e-guess", "upstream": "batched", "upstream_model": "sim-embed"},  # estimated counts
                {"name": "e-plain", "upstream": "plain", "upstream_model": "sim-embed", "tokenizer": SIM_TOKENIZER}],
        identities=[{"name": "app", "owner": "a@example.com", "models": ["*"]}],
        extra={"usage": {"flush_interval": 0.05}, "resilience": {"max_attempts": 1}})
    yield g, sim
    g.stop()
    sim.stop()


def caller_input(i: int) -> str | list[str] | list[int] | list[list[int]]:
    """Caller ``i``'s input: one text, or several; short words and punctuation, so four characters a token
    (the estimate without a tokenizer) is far from the sim's count."""
    words = ["a,", "b;", "see!", "why?", "Hello,", "world...", "ok", "(please)"]
    texts = [" ".join(words[(i + k) % len(words)] for k in range(1 + (i * 7 + j) % 9)) + f" #{i}.{j}"
             for j in range(1 + i % 3)]
    return texts[0] if i % 4 == 0 else texts


async def embed(client: openai.AsyncOpenAI, model: str, inp, **kw) -> tuple[list[list[float]], int, str]:
    """The vectors, the answer's prompt_tokens and the request id of one call through the SDK."""
    raw = await client.embeddings.with_raw_response.create(model=model, input=inp, **kw)
    got = raw.parse()
    assert [d.index for d in got.data] == list(range(len(got.data)))
    return [d.embedding for d in got.data], got.usage.prompt_tokens, raw.headers["x-request-id"]


async def crowd(g: Gateway, model: str, inputs: list, **kw) -> list:
    limits = httpx.Limits(max_connections=len(inputs), max_keepalive_connections=len(inputs))
    async with openai.AsyncOpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0,
                                  http_client=httpx.AsyncClient(limits=limits, timeout=30)) as client:
        return await asyncio.gather(*(embed(client, model, inp, **kw) for inp in inputs), return_exceptions=True)


def alone(g: Gateway, inputs: list, **kw) -> list:
    """Each input's answer sent alone, through the upstream that never batches."""
    async def run() -> list:
        async with openai.AsyncOpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0) as client:
            return [await embed(client, "e-plain", inp, **kw) for inp in inputs]
    return asyncio.run(run())


def calls(sim: Sim) -> int:
    return sim.stats()["embedding_requests"]


def test_sixty_four_callers_at_once_make_five_times_fewer_upstream_calls_each_exactly_its_own_answer(rig):
    g, sim = rig
    inputs = [caller_input(i) for i in range(C)]
    expected = alone(g, inputs)
    before, tokens_before, since = calls(sim), sim.stats()["prompt_tokens"], time.time() - 1
    got = asyncio.run(crowd(g, "e-batch", inputs))
    made = calls(sim) - before
    assert made * 5 <= C, f"{made} upstream calls for {C} callers"
    for (vectors, tokens, _), (want, want_tokens, _) in zip(got, expected):
        assert vectors == want  # its own vectors, in its own order, indexed from 0
        assert tokens == want_tokens  # its own prompt tokens, as it would have been charged alone
    rows = {r["request_id"]: r for r in usage_rows(g, since, C)}
    for (_, tokens, rid) in got:
        assert rows[rid]["prompt_tokens"] == tokens, rows[rid]
        assert rows[rid]["status"] == 200 and rows[rid]["model"] == "e-batch"
    # batched: charged its own count out of a batch's total; upstream: a straggler that went alone
    sources = [rows[rid]["usage_source"] for _, _, rid in got]
    assert set(sources) <= {"batched", "upstream"} and sources.count("batched") >= C - made, sources
    assert sum(t for _, t, _ in got) == sim.stats()["prompt_tokens"] - tokens_before


def batch_metric(g: Gateway) -> tuple[float, float]:
    """``sluice_embeddings_batch_requests`` of the batching upstream: (upstream calls, callers they carried)."""
    text = httpx.get(g.admin_url + "/metrics").text
    got = {s.name: s.value for f in text_string_to_metric_families(text) if f.name == "sluice_embeddings_batch_requests"
           for s in f.samples if s.labels.get("upstream") == "batched"}
    return got.get("sluice_embeddings_batch_requests_count", 0.0), got.get("sluice_embeddings_batch_requests_sum", 0.0)


def test_the_metrics_count_every_upstream_call_of_a_batching_upstream_and_the_callers_it_carried(rig):
    g, sim = rig
    (calls_before, carried_before), sim_before = batch_metric(g), calls(sim)
    got = asyncio.run(crowd(g, "e-batch", [caller_input(i) for i in range(C)]))
    assert not [e for e in got if isinstance(e, BaseException)]
    made, carried = (a - b for a, b in zip(batch_metric(g), (calls_before, carried_before)))
    assert made == calls(sim) - sim_before and made * 5 <= C  # one observation per upstream call, batched or alone
    assert carried == C  # every caller counted once, in the call that carried it


def test_token_arrays_are_batched_too_and_counted_exactly_without_a_tokenizer(rig):
    g, sim = rig
    inputs = [[[i, i + 1, i + 2][: 1 + i % 3]] * (1 + i % 2) if i % 2 else list(range(i + 1)) for i in range(16)]
    expected = alone(g, inputs)
    before, since = calls(sim), time.time() - 1
    got = asyncio.run(crowd(g, "e-guess", inputs))
    assert calls(sim) - before < len(inputs)
    rows = {r["request_id"]: r for r in usage_rows(g, since, len(inputs))}
    for (vectors, tokens, rid), (want, want_tokens, _) in zip(got, expected):
        assert vectors == want and tokens == want_tokens
        assert rows[rid]["prompt_tokens"] == want_tokens and rows[rid]["usage_source"] in ("batched", "upstream")
    assert "batched" in {r["usage_source"] for r in rows.values()}


def test_estimated_counts_share_out_exactly_what_the_upstream_charged(rig):
    g, sim = rig
    inputs = [caller_input(i) for i in range(16)]
    expected = alone(g, inputs)
    tokens_before, since = sim.stats()["prompt_tokens"], time.time() - 1
    got = asyncio.run(crowd(g, "e-guess", inputs))
    charged = sim.stats()["prompt_tokens"] - tokens_before
    assert [v for v, _, _ in got] == [v for v, _, _ in expected]
    rows = {r["request_id"]: r for r in usage_rows(g, since, len(inputs))}
    mine = [rows[rid] for _, _, rid in got]
    assert sum(r["prompt_tokens"] for r in mine) == charged  # shares add up to what the upstream charged
    assert {r["usage_source"] for r in mine} <= {"apportioned", "upstream"}
    assert "apportioned" in {r["usage_source"] for r in mine}


def test_one_input_the_upstream_refuses_fails_only_its_own_caller(rig):
    g, sim = rig
    inputs = [caller_input(i) for i in range(12)]
    too_long = " ".join(["word"] * 33_000)  # over the sim's 32,768-token context, as vLLM refuses it
    expected = alone(g, inputs)
    got = asyncio.run(crowd(g, "e-batch", [*inputs[:5], too_long, *inputs[5:]]))
    bad = got.pop(5)
    assert isinstance(bad, openai.BadRequestError), bad
    assert "maximum context length" in bad.message and "33000 tokens" in bad.message
    for (vectors, tokens, _), (want, want_tokens, _) in zip(got, expected):
        assert vectors == want and tokens == want_tokens


def test_requests_whose_dimensions_or_encoding_differ_are_never_combined(rig):
    g, sim = rig
    inputs = [caller_input(i) for i in range(8)]
    kinds = [{"dimensions": 16, "encoding_format": "float"}, {"dimensions": 32, "encoding_format": "float"},
             {"dimensions": 16, "encoding_format": "base64"}, {"encoding_format": "float"}]
    expected = [alone(g, inputs, **k) for k in kinds]

    async def all_kinds() -> list:
        return await asyncio.gather(*(crowd(g, "e-batch", inputs, **k) for k in kinds))
    before = calls(sim)
    got = asyncio.run(all_kinds())
    assert calls(sim) - before >= len(kinds)  # one call each at the least: never one for two kinds
    for k, answers, want in zip(kinds, got, expected):
        for (vectors, tokens, _), (w, wt, _) in zip(answers, want):
            assert vectors == w and tokens == wt
            dims = k.get("dimensions", 64)  # base64 as the SDK gives it when asked: little-endian float32
            assert all(len(base64.b64decode(v)) == 4 * dims if isinstance(v, str) else len(v) == dims for v in vectors)


def test_a_caller_that_leaves_does_not_cut_the_batch_for_the_others(rig):
    g, sim = rig
    inputs = [caller_input(i) for i in range(8)]
    expected = alone(g, inputs)
    sim.faults(delay_ms=1500)
    try:
        async def run() -> list:
            async def leaver() -> None:
                with pytest.raises(httpx.ReadTimeout):
                    async with httpx.AsyncClient(timeout=httpx.Timeout(30, read=0.5)) as c:
                        await c.post(g.v1 + "/embeddings", headers={"Authorization": f"Bearer {g.keys['app']}"},
                                     json={"model": "e-batch", "input": "I will not wait.", "encoding_format": "base64"})
            got, _ = await asyncio.gather(crowd(g, "e-batch", inputs), leaver())  # the SDK asks for base64 too
            return got
        before, cut = calls(sim), sim.stats()["client_disconnects"]
        got = asyncio.run(run())
        assert calls(sim) - before <= 2  # one call, or the leaver's own on a loaded machine
        assert sim.stats()["client_disconnects"] == cut  # and no upstream call was cut when it left
    finally:
        sim.clear_faults()
    for (vectors, tokens, _), (want, want_tokens, _) in zip(got, expected):
        assert vectors == want and tokens == want_tokens


def test_an_upstream_failure_fails_only_the_callers_of_that_batch_each_with_its_own_error(rig):
    g, sim = rig
    inputs = [caller_input(i) for i in range(8)]
    expected = alone(g, inputs)
    sim.faults(error_status=503, error_count=1)  # the next upstream call fails, and only that one
    try:
        before = calls(sim)
        failed = asyncio.run(crowd(g, "e-batch", inputs))
        made = calls(sim) - before
    finally:
        sim.clear_faults()
    assert made <= 2  # one batch, or two on a loaded machine: never each caller again alone (a 503 is the upstream's)
    errors = [x for x in failed if isinstance(x, BaseException)]
    assert errors and all(isinstance(e, openai.InternalServerError) and e.status_code == 503 for e in errors), failed
    ids = [e.response.headers["x-request-id"] for e in errors]
    assert len(set(ids)) == len(ids)  # each its own error, under its own request id
    assert all(e.body["code"] == "upstream_unavailable" for e in errors)
    got = asyncio.run(crowd(g, "e-batch", inputs))  # the next batch is not touched by it
    for (vectors, tokens, _), (want, want_tokens, _) in zip(got, expected):
        assert vectors == want and tokens == want_tokens


def test_an_upstream_without_batching_sends_every_request_alone(rig):
    g, sim = rig
    inputs = [caller_input(i) for i in range(16)]
    before = calls(sim)
    got = asyncio.run(crowd(g, "e-plain", inputs))
    assert calls(sim) - before == len(inputs)
    assert all(not isinstance(x, BaseException) for x in got)


@pytest.mark.parametrize("upstream, needle", [
    ("{name: u, base_url: 'http://127.0.0.1:9', api: anthropic, embeddings_batching: {}}", "needs api: openai"),
    ("{name: u, base_url: 'http://127.0.0.1:9', embeddings_batching: {max_batch_inputs: 4096}}", "max_batch_inputs"),
    ("{name: u, base_url: 'http://127.0.0.1:9', embeddings_batching: {window_ms: 2}}", "window_ms"),
])
def test_a_bad_embeddings_batching_setting_stops_the_config_check_naming_it(tmp_path, upstream, needle):
    p = tmp_path / "c.yaml"
    p.write_text(f"upstreams: [{upstream}]\n")
    r = subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(p)], capture_output=True, text=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode != 0 and needle in (r.stdout + r.stderr).replace("\n", ""), r.stdout + r.stderr
