"""The Anthropic Messages API through sluice (issue 24, item 1): the official ``anthropic`` SDK against a
real gateway in front of the sim, over both wires to the upstream (``messages_rig``): ``translated`` to
its chat route, ``native`` to its ``/v1/messages`` (``api: anthropic``). Identity, scopes, the tokenizer
estimate, usage records and cost, the output guard's masking and tool boundaries hold the same from the
caller's side either way; replies, streams and errors are Anthropic's. What only the native wire has
(headers and body relayed, thinking blocks, the upstream's own count) is in ``test_messages_native``."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from messages_grammar import parse_sse, validate  # noqa: E402
from messages_rig import NANOS, RIGS, UPSTREAM_KEY, reply_text, start_rig  # noqa: E402
from rigs import usage_row  # noqa: E402
from support import Gateway, Sim  # noqa: E402

TOOLS = [{"name": "get_weather", "description": "Weather for a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
CALL = 'sim:call get_weather {"city": "Oslo", "days": [1, 2, 3]}'
ASK = {"model": "sim-small", "max_tokens": 7, "system": "Be brief.",
       "messages": [{"role": "user", "content": "Tell me a story."}]}


@pytest.fixture(scope="module", params=RIGS)
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    g, sim = start_rig(tmp_path_factory.mktemp(f"messages-{request.param}"), request.param)
    g.kind = request.param  # type: ignore[attr-defined]
    yield g, sim
    g.stop()
    sim.stop()


def client(g: Gateway, key: str | None = None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=g.url, api_key=key or g.keys["app"], max_retries=0, timeout=15.0)


def test_a_message_through_sluice_is_answered_in_anthropics_shape_and_recorded_as_messages(rig) -> None:
    g, sim = rig
    msg = client(g).messages.create(**ASK)  # the SDK sends its key as x-api-key
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 7
    assert msg.content[0].type == "text" and len(msg.content[0].text.split()) == 7
    # the sim counted the translated prompt with the same tokenizer sluice estimates with
    direct = anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0).messages.count_tokens(
        model="sim-small", system=ASK["system"], messages=ASK["messages"])
    counted = client(g).messages.count_tokens(model="sim-small", system=ASK["system"], messages=ASK["messages"])
    assert counted.input_tokens == msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)
    assert abs(counted.input_tokens - direct.input_tokens) <= 8, (counted, direct)  # chat framing vs messages'
    rows = g.admin("GET", "/admin/usage", params={"limit": 50}).json()["data"]
    assert any(r["endpoint"] == "messages" and r["completion_tokens"] == 7 for r in rows), rows


def test_a_stream_through_sluice_passes_the_grammar_and_equals_the_whole_reply(rig) -> None:
    g, _ = rig
    ask = {**ASK, "max_tokens": 5000, "messages": [{"role": "user", "content": "Write a poem."}]}
    r = httpx.post(g.url + "/v1/messages", json={**ask, "stream": True}, timeout=15,
                   headers={"x-api-key": g.keys["app"], "anthropic-version": "2023-06-01"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = parse_sse(r.content)
    assert validate(events) == "message_stop"
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0  # the estimate, before the upstream's count
    c = client(g)
    with c.messages.stream(**ask) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    whole = c.messages.create(**ask)
    assert final.content[0].text == text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens > 0


def test_a_streamed_tool_call_reaches_the_sdk_with_its_whole_input(rig) -> None:
    g, _ = rig
    ask = {"model": "sim-small", "max_tokens": 64, "tools": TOOLS,
           "messages": [{"role": "user", "content": [{"type": "text", "text": CALL}]}]}
    with client(g).messages.stream(**ask) as s:
        final = s.get_final_message()
    [use] = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather" and use.input == {"city": "Oslo", "days": [1, 2, 3]}  # never {} (LiteLLM #25321)
    assert final.stop_reason == "tool_use"
    whole = client(g).messages.create(**ask)
    assert [b.input for b in whole.content if b.type == "tool_use"] == [use.input]


def test_refusals_are_anthropic_errors_the_sdk_raises_as_their_types(rig) -> None:
    g, _ = rig
    with pytest.raises(anthropic.AuthenticationError) as bad_key:
        client(g, "slk_dev_" + "x" * 36).messages.create(**ASK)
    assert bad_key.value.body["type"] == "error" and bad_key.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.NotFoundError):  # outside the caller's scope looks like missing
        client(g).messages.create(**{**ASK, "model": "sim-other"})
    with pytest.raises(anthropic.BadRequestError) as bad:
        client(g).messages.create(model="sim-small", max_tokens=5, messages=[
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_nowhere", "content": "secret-42"}]}])
    assert bad.value.status_code == 400 and "secret-42" not in str(bad.value.body)
    r = httpx.post(g.url + "/v1/messages", content=b"{not json", timeout=10,
                   headers={"x-api-key": g.keys["app"], "content-type": "application/json"})
    assert r.status_code == 400 and r.json() == {"type": "error", "error": {
        "type": "invalid_request_error", "message": r.json()["error"]["message"]}}
    # no key at all, refused from the headers before a large body is sent: still Anthropic's shape
    with socket.create_connection(("127.0.0.1", g.port), timeout=10) as s:
        s.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 200000\r\n\r\n")
        head, _, body = s.recv(65536).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert json.loads(body) == {"type": "error", "error": {"type": "authentication_error",
                                                           "message": json.loads(body)["error"]["message"]}}, body


@pytest.mark.parametrize(("upstream", "status", "kind"), [(503, 529, "overloaded_error"), (429, 429, "rate_limit_error")])
def test_an_upstream_refusal_keeps_its_retry_after_in_anthropics_status_and_type(rig, upstream, status, kind) -> None:
    g, sim = rig
    sim.faults(error_status=upstream, error_count=5, retry_after=4)
    try:
        r = httpx.post(g.url + "/v1/messages", json=ASK, timeout=15, headers={"x-api-key": g.keys["app"]})
    finally:
        sim.clear_faults()
    assert r.status_code == status and r.headers["retry-after"] == "4", (r.status_code, r.headers, r.text)
    assert r.json() == {"type": "error", "error": {"type": kind, "message": r.json()["error"]["message"]}}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_call_outside_the_grant_leaves_nothing_of_itself_and_a_high_one_is_held(rig, stream) -> None:
    g, _ = rig
    # offering delete_repo is refused before the model (400); the model calls it all the same
    offered = [{"name": n, "input_schema": {"type": "object"}} for n in ("get_weather", "transfer_funds")]
    for line, tool in (('sim:call delete_repo {"repo": "victim-repo-77"}', "delete_repo"),
                       ('sim:call transfer_funds {"to": "victim-acct-77", "amount": 5}', "transfer_funds")):
        ask = {"model": "sim-small", "max_tokens": 64, "tools": offered, "messages": [{"role": "user", "content": line}]}
        r = httpx.post(g.url + "/v1/messages", json={**ask, "stream": stream}, timeout=15,
                       headers={"x-api-key": g.keys["app"]})
        assert r.status_code == 200, r.text
        assert b"victim-" not in r.content and b'"tool_use"' not in r.content, (tool, r.text[:600])
        if stream:
            assert validate(parse_sse(r.content)) == "message_stop"
        c = client(g)
        final = c.messages.stream(**ask).__enter__().get_final_message() if stream else c.messages.create(**ask)
        assert not [b for b in final.content if b.type == "tool_use"] and final.stop_reason != "tool_use"
        if tool == "transfer_funds":  # held for a human: the caller reads the approval it waits on
            assert "apv_" in "".join(b.text for b in final.content if b.type == "text")


def test_the_model_list_answers_an_anthropic_caller_in_its_shape_and_scope(rig) -> None:
    g, _ = rig
    page = client(g).models.list()  # the SDK sends anthropic-version
    assert [m.id for m in page.data] == ["sim-small"] and page.data[0].type == "model" and not page.has_more
    assert page.data[0].created_at.year >= 2026
    openai_shape = httpx.get(g.url + "/v1/models", headers={"Authorization": f"Bearer {g.keys['app']}"}).json()
    assert openai_shape["object"] == "list" and [m["id"] for m in openai_shape["data"]] == ["sim-small"]
    with pytest.raises(anthropic.AuthenticationError) as refused:  # a refusal in Anthropic's shape too
        client(g, "slk_dev_" + "y" * 36).models.list()
    assert refused.value.body["type"] == "error"
    r = httpx.get(g.url + "/v1/models")
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_an_async_client_gets_the_same_reply_whole_and_streamed(rig) -> None:
    g, _ = rig

    async def go() -> tuple[anthropic.types.Message, str, anthropic.types.Message]:
        async with anthropic.AsyncAnthropic(base_url=g.url, api_key=g.keys["app"], max_retries=0, timeout=15.0) as c:
            whole = await c.messages.create(**ASK)
            async with c.messages.stream(**ASK) as s:
                text = "".join([t async for t in s.text_stream])
                final = await s.get_final_message()
        return whole, text, final

    whole, text, final = asyncio.run(go())
    assert whole.content[0].text == text == final.content[0].text and len(text.split()) == 7  # type: ignore[union-attr]
    assert whole.stop_reason == final.stop_reason == "max_tokens"
    assert whole.usage.output_tokens == final.usage.output_tokens == 7


def test_a_stream_the_upstream_cuts_ends_in_an_error_event_the_sdk_raises(rig) -> None:
    g, sim = rig
    ask = {**ASK, "max_tokens": 60, "messages": [{"role": "user", "content": "Tell me a long story."}]}
    sim.faults(disconnect_after_chunks=40)
    try:
        r = httpx.post(g.url + "/v1/messages", json={**ask, "stream": True}, timeout=15,
                       headers={"x-api-key": g.keys["app"]})
        events = parse_sse(r.content)
        assert r.status_code == 200 and validate(events) == "error", r.text[-600:]  # never a silent end
        assert any(name == "content_block_delta" for name, _ in events)  # it had started: no fallback, an error
        assert not any(name in ("message_delta", "message_stop") for name, _ in events)
        with pytest.raises(anthropic.APIStatusError) as raised:
            with client(g).messages.stream(**ask) as s:
                s.get_final_message()
        assert raised.value.body["type"] == "error"  # type: ignore[index]
    finally:
        sim.clear_faults()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_secret_split_across_text_deltas_reaches_the_caller_masked(rig, stream) -> None:
    g, sim = rig
    ask = {"model": "sim-small", "max_tokens": 64,
           "messages": [{"role": "user", "content": "sim:say the key is AKIAIOSF|ODNN7EXAMPLE| and that is all"}]}
    r = httpx.post(g.url + "/v1/messages", json={**ask, "stream": stream}, timeout=15, headers={"x-api-key": g.keys["app"]})
    assert r.status_code == 200, r.text
    assert b"AKIAIOSF" not in r.content and b"ODNN7EXAMPLE" not in r.content, r.text
    text = reply_text(r, stream)
    assert text == "the key is [REDACTED:aws_access_key] and that is all", text
    last = sim.stats()["last_messages" if g.kind == "native" else "last_chat"]
    assert "ODNN7EXAMPLE" in json.dumps(last["body"])  # the model did say it, in two deltas: the gateway caught it


def test_the_upstream_gets_the_gateways_key_and_never_the_callers(rig) -> None:
    g, sim = rig
    caller = g.keys["app"]
    client(g).messages.create(**ASK)  # x-api-key
    r = httpx.post(g.url + "/v1/messages", json=ASK, timeout=15, headers={"Authorization": f"Bearer {caller}"})
    assert r.status_code == 200, r.text
    stats = sim.stats()
    last = stats["last_messages" if g.kind == "native" else "last_chat"]
    if g.kind == "native":
        assert last["x-api-key"] == UPSTREAM_KEY and last["authorization"] is None
    else:
        assert last["authorization"] == f"Bearer {UPSTREAM_KEY}" and last["x-api-key"] is None
    assert last["headers"] and caller[8:] not in json.dumps(stats)  # in no header the sim got, nor anywhere else


def test_usage_is_recorded_from_the_upstreams_counts_and_priced_with_cache_reads_and_writes(rig) -> None:
    g, _ = rig
    system = " ".join(f"Rule {i}: answer in plain words and cite nothing you cannot check." for i in range(30))
    ask = {"model": "sim-small", "max_tokens": 5,
           "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}],
           "messages": [{"role": "user", "content": "What is the rule of three?"}]}
    c = client(g)
    seen = []
    for _ in range(2):
        raw = c.messages.with_raw_response.create(**ask)
        seen.append((raw.headers["x-request-id"], raw.parse().usage))
    r = httpx.post(g.url + "/v1/messages", json={**ask, "stream": True}, timeout=15, headers={"x-api-key": g.keys["app"]})
    events = parse_sse(r.content)
    assert validate(events) == "message_stop"
    seen.append((r.headers["x-request-id"], anthropic.types.Usage.model_validate(
        [d for name, d in events if name == "message_delta"][0]["usage"])))
    for rid, u in seen:
        read, wrote = u.cache_read_input_tokens or 0, u.cache_creation_input_tokens or 0
        row = usage_row(g, rid)
        assert row["endpoint"] == "messages" and row["usage_source"] == "upstream"
        assert (row["prompt_tokens"], row["completion_tokens"], row["cached_tokens"], row["cache_creation_tokens"]) == (
            u.input_tokens + read + wrote, u.output_tokens, read, wrote), (row, u)
        assert row["cost_nanos"] == (u.input_tokens * NANOS["input"] + read * NANOS["read"] + wrote * NANOS["write"]
                                     + u.output_tokens * NANOS["output"]), (row, u)
    first, again = seen[0][1], seen[1][1]
    assert (again.cache_read_input_tokens or 0) > 0  # the repeat was served from the upstream's cache
    if g.kind == "native":  # the breakpoint wrote the system prompt to the cache, and it was priced as a write
        assert (first.cache_creation_input_tokens or 0) > 0
    else:  # cache_control has no chat equivalent
        assert not first.cache_creation_input_tokens
