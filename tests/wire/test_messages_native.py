"""Messages sent natively to an ``api: anthropic`` upstream (issue 24, item 1, the native half): what only
this wire has. The caller's body goes as it came (the model and a clamped ``max_tokens`` replaced;
``thinking``, ``cache_control``, ``metadata`` relayed; server tools and what the input guard took out never
go), with its ``anthropic-version`` and ``anthropic-beta`` byte for byte and the gateway's key; thinking
blocks and their signatures come back untouched around the one output guard; ``ping`` is relayed;
``count_tokens`` is the upstream's own; a fallback to a chat upstream is translated, and the reverse.
The cases both wires share (SDK sync, async and streams, tool boundaries, masking, a cut stream, usage
and cost) run over this rig too, in ``test_messages_gateway``."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from messages_grammar import parse_sse, validate  # noqa: E402
from messages_rig import reply_text, start_rig  # noqa: E402
from rigs import fallbacks  # noqa: E402
from support import Gateway, Sim  # noqa: E402

THINK = {"type": "enabled", "budget_tokens": 1024}
ASK = {"model": "sim-small", "max_tokens": 12, "messages": [{"role": "user", "content": "Tell me a story."}]}
FALLBACKS = fallbacks("simx")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    g, sim = start_rig(
        tmp_path_factory.mktemp("messages-native"), "native",
        upstreams=[{"name": "simc", "base_url": "{sim}/v1"}],  # the same sim over the chat wire
        models=[{"name": "sim-alias", "upstream": "simx", "upstream_model": "sim-small"}],
        scopes=["sim-alias", "fb", "bf"],
        extra={**FALLBACKS, "limits": {"max_tokens_cap": 256, "over_cap": "clamp",
                                       "rules": [{"name": "roomy", "requests_per_minute": 100000}]},
               # every request traced (to no collector: its spans are dropped), so attempts carry a traceparent
               "telemetry": {"tracing": {"endpoint": "http://127.0.0.1:9/v1/traces", "ratio": 1.0}}})
    yield g, sim
    g.stop()
    sim.stop()


def client(g: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=g.url, api_key=g.keys["app"], max_retries=0, timeout=15.0)


def direct(sim: Sim) -> anthropic.Anthropic:
    """The sim itself, for what its answer is without the gateway in between."""
    return anthropic.Anthropic(base_url=sim.url, api_key="x", max_retries=0, timeout=15.0)


def post(g: Gateway, body: dict, headers: dict | None = None) -> httpx.Response:
    return httpx.post(g.url + "/v1/messages", json=body, timeout=15, headers={"x-api-key": g.keys["app"], **(headers or {})})


def last(sim: Sim) -> dict:
    return sim.stats()["last_messages"]


def test_anthropic_version_and_beta_reach_the_upstream_byte_for_byte_and_the_version_defaults(rig) -> None:
    g, sim = rig
    beta = "interleaved-thinking-2025-05-14,  token-efficient-tools-2025-02-19"
    for stream in (False, True):
        r = post(g, {**ASK, "stream": stream}, {"anthropic-version": "2023-06-01", "anthropic-beta": beta})
        assert r.status_code == 200, r.text
        got = last(sim)
        assert (got["anthropic-version"], got["anthropic-beta"]) == ("2023-06-01", beta), got
        assert got["headers"]["traceparent"].startswith("00-")  # beside the trace's own header
    r = post(g, ASK)  # no anthropic-* headers at all
    assert r.status_code == 200, r.text
    assert (last(sim)["anthropic-version"], last(sim)["anthropic-beta"]) == ("2023-06-01", None)
    client(g).messages.create(**ASK)  # the SDK's own version header goes as it sent it
    assert last(sim)["anthropic-version"] == anthropic.Anthropic(api_key="x").default_headers["anthropic-version"]


def test_the_callers_body_goes_as_it_came_with_the_model_replaced_and_max_tokens_clamped(rig) -> None:
    g, sim = rig
    body = {"model": "sim-alias", "max_tokens": 1000, "thinking": THINK, "metadata": {"user_id": "user-7"},
            "temperature": 1, "top_k": 5, "stop_sequences": ["\n\nHuman:"], "service_tier": "auto",
            "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "Tell me a story.", "cache_control": {"type": "ephemeral"}}]}]}
    r = post(g, body)
    assert r.status_code == 200, r.text
    sent = last(sim)["body"]
    assert sent["model"] == "sim-small" and sent["max_tokens"] == 256  # the alias's upstream model; the cap
    assert {k: v for k, v in sent.items() if k not in ("model", "max_tokens")} == {
        k: v for k, v in body.items() if k not in ("model", "max_tokens")}, sent


def test_server_tools_and_tools_the_caller_may_not_use_never_reach_the_upstream(rig) -> None:
    g, sim = rig
    weather = {"name": "get_weather", "input_schema": {"type": "object"}, "cache_control": {"type": "ephemeral"}}
    body = {**ASK, "tools": [weather, {"name": "rm_rf", "input_schema": {"type": "object"}},
                             {"type": "web_search_20250305", "name": "web_search"}],
            "mcp_servers": [{"type": "url", "url": "https://mcp.example.com/sse", "name": "x"}],
            "tool_choice": {"type": "auto"}, "thinking": THINK}
    r = post(g, body)
    assert r.status_code == 200, r.text
    sent = last(sim)["body"]
    assert sent["tools"] == [weather] and "mcp_servers" not in sent  # removed by the registry; not governed
    assert sent["tool_choice"] == {"type": "auto"} and sent["thinking"] == THINK  # the rest as it came
    r = post(g, {**ASK, "tools": [weather, {"type": "web_search_20250305", "name": "web_search"}]})
    assert r.status_code == 200 and last(sim)["body"]["tools"] == [weather], r.text  # guard-in removed nothing here


def test_a_secret_in_the_prompt_is_masked_before_the_upstream_and_the_rest_sent_as_guarded(rig) -> None:
    g, sim = rig
    body = {**ASK, "thinking": THINK, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "My key is AKIAIOSFODNN7EXAMPLE, keep it.", "cache_control": {"type": "ephemeral"}}]}]}
    r = post(g, body)
    assert r.status_code == 200, r.text
    sent = json.dumps(last(sim)["body"])
    assert "AKIAIOSFODNN7EXAMPLE" not in sent and "[REDACTED:aws_access_key]" in sent, sent
    assert '"thinking"' not in sent and "cache_control" not in sent  # as the guarded chat request: what chat carries


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_thinking_blocks_and_their_signatures_reach_the_caller_untouched(rig, stream) -> None:
    g, sim = rig
    ask = {**ASK, "thinking": THINK}
    want = direct(sim).messages.create(**ask)
    assert want.content[0].type == "thinking" and want.content[0].signature  # type: ignore[union-attr]
    if not stream:
        got = client(g).messages.create(**ask)
    else:
        with client(g).messages.stream(**ask) as s:
            got = s.get_final_message()
        raw = post(g, {**ask, "stream": True})
        events = parse_sse(raw.content)
        assert validate(events) == "message_stop"
        sims = parse_sse(httpx.post(sim.url + "/v1/messages", json={**ask, "stream": True}, timeout=15).content)
        thinking = [(n, d) for n, d in events if n.startswith("content_block") and d["index"] == 0]
        assert thinking == [(n, d) for n, d in sims if n.startswith("content_block") and d["index"] == 0]
        assert b'"type":"signature_delta"' in raw.content
    assert got.content[0].model_dump() == want.content[0].model_dump()
    assert [b.type for b in got.content] == ["thinking", "text"] and got.content[1].text == want.content[1].text  # type: ignore[union-attr]
    assert got.stop_reason == want.stop_reason and got.usage.output_tokens == want.usage.output_tokens


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_thinking_goes_through_while_a_call_outside_the_grant_leaves_nothing_of_itself(rig, stream) -> None:
    g, _ = rig
    ask = {"model": "sim-small", "max_tokens": 64, "thinking": THINK,
           "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
           "messages": [{"role": "user", "content": 'Please do this now for me.\nsim:call delete_repo {"repo": "victim-repo-9"}'}]}
    r = post(g, {**ask, "stream": stream})
    assert r.status_code == 200 and b"victim-" not in r.content and b'"tool_use"' not in r.content, r.text
    if stream:
        assert validate(parse_sse(r.content)) == "message_stop"
        with client(g).messages.stream(**ask) as s:
            final = s.get_final_message()
    else:
        final = client(g).messages.create(**ask)
    assert [b.type for b in final.content] == ["thinking", "text"] and final.stop_reason == "end_turn"
    assert "blocked" in final.content[1].text  # type: ignore[union-attr]


def test_the_upstreams_pings_are_relayed_once_it_has_started(rig) -> None:
    g, _ = rig
    events = parse_sse(post(g, {**ASK, "stream": True}).content)
    assert validate(events) == "message_stop"
    names = [n for n, _ in events]
    assert "ping" in names[names.index("content_block_delta"):], names  # the one after the first delta


def test_a_stream_cut_after_its_message_delta_is_still_an_error_the_sdk_raises(rig) -> None:
    g, sim = rig
    ask = {"model": "sim-small", "max_tokens": 64, "messages": [{"role": "user", "content": "sim:say all |of |it"}]}
    sim.faults(disconnect_after_chunks=3)  # the sim's three deltas and its message_delta, then no message_stop
    try:
        events = parse_sse(post(g, {**ask, "stream": True}).content)
        assert validate(events) == "error" and "message_stop" not in [n for n, _ in events], events
        with pytest.raises(anthropic.APIStatusError):
            with client(g).messages.stream(**ask) as s:
                s.get_final_message()
    finally:
        sim.clear_faults()


def test_count_tokens_is_the_upstreams_own_count(rig) -> None:
    g, sim = rig
    ask = {"model": "sim-small", "system": "Be brief.", "messages": [{"role": "user", "content": "Tell me a story."}]}
    before = sim.stats()["requests_total"]
    counted = client(g).messages.count_tokens(**ask)
    assert sim.stats()["requests_total"] == before + 1  # asked of the upstream, not estimated
    assert counted.input_tokens == direct(sim).messages.count_tokens(**ask).input_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("model", "first", "then"), [("fb", "last_messages", "last_chat"),
                                                      ("bf", "last_chat", "last_messages")],
                         ids=["native-then-chat", "chat-then-native"])
def test_a_fallback_of_the_other_api_gets_the_body_of_its_own_wire(rig, model, first, then, stream) -> None:
    g, sim = rig
    prompt = f"Tell me a story of {model} {stream}."  # its own, to find in what the sim last got on each route
    sim.faults(error_status=503, error_count=1)  # the first attempt fails, whichever route of the sim it took
    try:
        r = post(g, {**ASK, "model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]})
    finally:
        sim.clear_faults()
    assert r.status_code == 200, r.text
    text = reply_text(r, stream)
    assert text.strip()
    got = sim.stats()
    assert prompt in json.dumps(got[first]["body"]) and prompt in json.dumps(got[then]["body"])  # tried one, then the other
    body = got[then]["body"]
    assert body["model"] == "sim-small" and (("stream_options" in body) == (then == "last_chat" and stream))
    assert r.headers["x-sluice-route"].endswith("@chat" if then == "last_chat" else "@native")


def test_an_overloaded_upstream_is_anthropics_529_with_its_retry_after(rig) -> None:
    g, sim = rig
    sim.faults(error_status=529, error_count=5, retry_after=3)
    try:
        r = post(g, ASK)
    finally:
        sim.clear_faults()
    assert r.status_code == 529 and r.headers["retry-after"] == "3", (r.status_code, r.text)
    assert r.json()["error"]["type"] == "overloaded_error"


def test_a_chat_completion_to_an_anthropic_upstream_is_refused_by_name(rig) -> None:
    g, _ = rig
    with openai.OpenAI(base_url=g.url + "/v1", api_key=g.keys["app"], max_retries=0) as oa:
        with pytest.raises(openai.BadRequestError) as refused:
            oa.chat.completions.create(model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert refused.value.code == "wrong_api" and "/v1/messages" in refused.value.message
