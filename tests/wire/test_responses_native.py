"""Responses requests sent natively to an ``api: responses`` upstream (issue 24, item 2): the sim's own
``/v1/responses`` (stateless: it refuses ``previous_response_id``) behind a gateway, with the ``openai`` SDK
in front. The gateway owns the state: a chain is rebuilt from its memory and sent whole as the input, with
``store: false``; the caller's request goes re-encoded with the target's model, the limits' output bound,
and nothing the input guard took out; the answer, whole or streamed, is governed in the chat form by the one
output guard (a secret split across ``output_text`` deltas masked, a call outside the grant leaving nothing,
a high-risk one held) and costs what the translated path's does; a cut stream is ``response.failed``; a
fallback to a chat upstream is translated, and the reverse; other APIs' requests to it are refused by name.
The cases both wires share (stored responses, chains, identities) run over this wire too, in
``test_responses_gateway``."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

import sluice.sim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from responses_grammar import parse_sse, validate  # noqa: E402
from rigs import GUARDRAILS, TOOLS, fallbacks, usage_row  # noqa: E402
from support import Gateway, Sim, start_gateway  # noqa: E402

SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))
UPSTREAM_KEY = "sk-upstream-" + "r" * 24  # what sluice sends the sim; a caller's key never goes
PRICE = {"input": 3, "output": 15, "cached_input": 0.3}  # per million tokens
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
FALLBACKS = fallbacks("simr")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    """A gateway whose ``sim-small`` is the sim's Responses route (``simr``), and ``sim-chat`` the same
    model over the sim's chat route (``simc``), priced alike: the same work over either wire."""
    tmp = tmp_path_factory.mktemp("responses-native")
    sim = Sim(tmp)
    try:
        g = start_gateway(
            tmp, upstreams=[{"name": "simr", "base_url": sim.url + "/v1", "api": "responses", "api_key": UPSTREAM_KEY},
                            {"name": "simc", "base_url": sim.url + "/v1", "api_key": UPSTREAM_KEY},
                            {"name": "sima", "base_url": sim.url + "/v1", "api": "anthropic", "api_key": UPSTREAM_KEY}],
            models=[{"name": "sim-small", "upstream": "simr", "tokenizer": SIM_TOKENIZER},
                    {"name": "sim-chat", "upstream": "simc", "upstream_model": "sim-small", "tokenizer": SIM_TOKENIZER},
                    {"name": "sim-claude", "upstream": "sima", "upstream_model": "sim-small"}],
            identities=[{"name": "app", "owner": "team-a@example.com",
                         "models": ["sim-small", "sim-chat", "sim-claude", "fb", "bf"]}],
            extra={"tools": TOOLS, "guardrails": GUARDRAILS, "prices": {"sim-small": PRICE, "sim-chat": PRICE},
                   "limits": {"max_tokens_cap": 256, "over_cap": "clamp",
                              "rules": [{"name": "roomy", "requests_per_minute": 100000}]}, **FALLBACKS},
        )
    except BaseException:
        sim.stop()
        raise
    yield g, sim
    g.stop()
    sim.stop()


def client(g: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0, timeout=15.0)


def post(g: Gateway, body: dict) -> httpx.Response:
    return httpx.post(g.v1 + "/responses", json=body, timeout=15, headers={"Authorization": f"Bearer {g.keys['app']}"})


def sent(sim: Sim) -> dict:
    """The body of the last request the sim's Responses route got."""
    return sim.stats()["last_responses"]["body"]


def texts(output: list[dict]) -> str:
    return "".join(p.get("text", "") for o in output if o["type"] == "message" for p in o["content"])


def output_of(r: httpx.Response, stream: bool, *ends: str) -> list[dict]:
    """The output items of a Response, whole or streamed (a stream that does not end in one of ``ends`` fails)."""
    if stream:
        events = parse_sse(r.content)
        assert validate(events) in ends
        return events[-1][1]["response"]["output"]
    return r.json()["output"]


def test_the_sdk_is_answered_whole_and_streamed_by_the_upstreams_own_responses_route(rig) -> None:
    g, sim = rig
    c = client(g)
    before = sim.stats()["chat_requests"]
    ask = {"model": "sim-small", "instructions": "Be brief.", "input": "sim:say Hello from the other side.",
           "max_output_tokens": 20}
    whole = c.responses.create(**ask)
    assert whole.output_text == "Hello from the other side." and whole.status == "completed"
    body = sent(sim)
    assert body["model"] == "sim-small" and body["store"] is False and "stream" not in body
    assert body["instructions"] == "Be brief." and body["max_output_tokens"] == 20 and body["input"] == ask["input"]
    with c.responses.stream(**ask) as s:
        streamed = s.get_final_response()
    assert sent(sim)["stream"] is True and streamed.output_text == whole.output_text
    assert streamed.usage.input_tokens == whole.usage.input_tokens > 0 and streamed.usage.output_tokens == whole.usage.output_tokens
    assert sim.stats()["chat_requests"] == before  # nothing went over the chat wire
    for r in (whole, streamed):  # the gateway's responses, stored by it: the sim keeps nothing
        assert r.id.startswith("resp_") and c.responses.retrieve(r.id).output_text == r.output_text


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_chain_is_rebuilt_by_the_gateway_and_sent_whole_without_previous_response_id(rig, stream: bool) -> None:
    g, sim = rig
    c = client(g)
    first = c.responses.create(model="sim-small", input=f'Weather please {stream}.\nsim:call get_weather {{"city": "Oslo"}}',
                               tools=[WEATHER])
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and json.loads(calls[0].arguments) == {"city": "Oslo"}
    answer = [{"type": "function_call_output", "call_id": calls[0].call_id, "output": "12 C and clear"}]
    if stream:
        with c.responses.stream(model="sim-small", previous_response_id=first.id, tools=[WEATHER], input=answer,
                                max_output_tokens=5) as s:
            second = s.get_final_response()
    else:
        second = c.responses.create(model="sim-small", previous_response_id=first.id, tools=[WEATHER], input=answer,
                                    max_output_tokens=5)
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    body = sent(sim)
    assert "previous_response_id" not in body and body["store"] is False
    items = body["input"]
    assert [i["type"] for i in items] == ["message", "function_call", "function_call_output"], items
    assert items[0]["role"] == "user" and f"Weather please {stream}." in json.dumps(items[0]["content"])
    assert (items[1]["call_id"], items[1]["name"], json.loads(items[1]["arguments"])) == (
        calls[0].call_id, "get_weather", {"city": "Oslo"})
    assert items[2] == answer[0]
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its output were read again


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_same_work_costs_the_same_tokens_and_money_as_on_the_translated_path(rig, stream: bool) -> None:
    g, _ = rig
    c = client(g)
    seen, text = {}, {}
    for model in ("sim-small", "sim-chat"):
        ask = {"model": model, "instructions": "Be brief.", "input": "Tell me a story about a lighthouse.",
               "max_output_tokens": 9, "store": False}
        if stream:
            with c.responses.with_streaming_response.create(**ask, stream=True) as r:
                rid = r.headers["x-request-id"]
                events = parse_sse(r.read())
            assert validate(events) in ("response.completed", "response.incomplete")
            final = events[-1][1]["response"]
            text[model], use = texts(final["output"]), final["usage"]
        else:
            r = c.responses.with_raw_response.create(**ask)
            rid, parsed = r.headers["x-request-id"], r.parse()
            text[model], use = parsed.output_text, parsed.usage.model_dump()
        row = usage_row(g, rid)
        seen[model] = (use["input_tokens"], use["output_tokens"], row["prompt_tokens"], row["completion_tokens"],
                       row["cost_nanos"], row["usage_source"], row["api"])
    assert text["sim-small"] and text["sim-small"] == text["sim-chat"], text
    assert seen["sim-small"] == seen["sim-chat"], seen
    prompt, completion, _, _, cost, source, api = seen["sim-small"]
    assert completion == 9 and source == "upstream" and api == "responses" and cost == prompt * 3000 + completion * 15000


def test_the_request_goes_as_the_caller_sent_it_less_what_is_not_governed_and_max_output_tokens_clamped(rig) -> None:
    g, sim = rig
    hosted = {"type": "web_search"}
    rm = {"type": "function", "name": "rm_rf", "parameters": {"type": "object"}}
    body = {"model": "sim-small", "max_output_tokens": 1000, "instructions": "Be brief.", "temperature": 0.5,
            "top_p": 0.9, "reasoning": {"effort": "low", "summary": "auto"}, "truncation": "auto",
            "text": {"format": {"type": "text"}, "verbosity": "low"}, "prompt_cache_key": "k-1", "user": "user-7",
            "tools": [WEATHER, rm, hosted], "tool_choice": "auto", "parallel_tool_calls": False,
            "metadata": {"ticket": "T-1"}, "include": ["reasoning.encrypted_content"], "max_tool_calls": 3,
            "input": [{"type": "message", "role": "developer", "content": "Answer in English."},
                      {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me a story."}]}]}
    r = post(g, body)
    assert r.status_code == 200, r.text
    got = sent(sim)
    assert got["model"] == "sim-small" and got["max_output_tokens"] == 256 and got["store"] is False  # the cap
    assert got["tools"] == [WEATHER]  # rm_rf removed by the registry, the hosted tool never governed: neither goes
    for name in ("metadata", "include", "max_tool_calls", "previous_response_id"):
        assert name not in got, name
    same = ("instructions", "temperature", "top_p", "reasoning", "truncation", "text", "prompt_cache_key", "user",
            "tool_choice", "parallel_tool_calls", "input")
    assert {k: got[k] for k in same} == {k: body[k] for k in same}, got


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_call_outside_the_grant_leaves_nothing_of_itself(rig, stream: bool) -> None:
    g, _ = rig
    ask = {"model": "sim-small", "tools": [WEATHER], "stream": stream,
           "input": 'Please do this now for me.\nsim:call delete_repo {"repo": "victim-repo-9"}'}
    r = post(g, ask)
    assert r.status_code == 200 and b"victim-" not in r.content and b"\"function_call\"" not in r.content, r.text
    output = output_of(r, stream, "response.completed")
    assert not [o for o in output if o["type"] == "function_call"] and "blocked" in texts(output), output


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_high_risk_call_is_held_with_its_approval_id(rig, stream: bool) -> None:
    g, _ = rig
    pay = [{"type": "function", "name": "transfer_funds", "parameters": {"type": "object"}}]
    r = post(g, {"model": "sim-small", "tools": pay, "stream": stream,
                 "input": 'sim:call transfer_funds {"to": "acct-9", "amount": 5}'})
    assert r.status_code == 200 and b"acct-9" not in r.content, r.text
    output = output_of(r, stream, "response.completed")
    assert not [o for o in output if o["type"] == "function_call"]
    assert re.search(r"approval id apv_[A-Za-z0-9_-]+", texts(output)), output


def test_a_secret_is_masked_across_output_text_deltas_and_in_the_prompt_before_the_upstream(rig) -> None:
    g, sim = rig
    r = post(g, {"model": "sim-small", "stream": True,
                 "input": "sim:say the key is AKIAIOSF|ODNN7EXAMPLE| and that is all"})
    assert r.status_code == 200 and b"AKIAIOSF" not in r.content and b"ODNN7EXAMPLE" not in r.content, r.text
    events = parse_sse(r.content)
    assert validate(events) == "response.completed"
    deltas = "".join(d["delta"] for n, d in events if n == "response.output_text.delta")
    assert deltas == "the key is [REDACTED:aws_access_key] and that is all", deltas
    r = post(g, {"model": "sim-small", "instructions": "Keep it safe.", "max_output_tokens": 5,
                 "input": [{"role": "user", "content": "My key is AKIAIOSFODNN7EXAMPLE, keep it."}]})
    assert r.status_code == 200, r.text
    got = sent(sim)
    assert "AKIAIOSFODNN7EXAMPLE" not in json.dumps(got) and "[REDACTED:aws_access_key]" in json.dumps(got), got
    assert got["instructions"] == "Keep it safe." and got["store"] is False and got["max_output_tokens"] == 5


def test_a_cut_stream_is_response_failed_and_the_sdk_raises(rig) -> None:
    g, sim = rig
    ask = {"model": "sim-small", "input": "sim:say all |of |it |and |more", "max_output_tokens": 50}
    sim.faults(disconnect_after_chunks=3)
    try:
        events = parse_sse(post(g, {**ask, "stream": True}).content)
        assert validate(events) == "response.failed", events
        assert events[-1][1]["response"]["error"]["code"] == "server_error"
        with pytest.raises((openai.APIError, RuntimeError)):
            with client(g).responses.stream(**ask) as s:
                s.get_final_response()
    finally:
        sim.clear_faults()


def test_the_callers_key_never_reaches_the_upstream(rig) -> None:
    g, sim = rig
    for stream in (False, True):
        r = post(g, {"model": "sim-small", "input": "Hello.", "max_output_tokens": 3, "stream": stream})
        assert r.status_code == 200, r.text
        lines = sim.stats()["last_responses"]["headers"]  # every header line the sim got, a repeated one too
        assert [v for k, v in lines if k.lower() in ("authorization", "x-api-key")] == [f"Bearer {UPSTREAM_KEY}"], lines
        assert not [k for k, v in lines if g.keys["app"] in v], lines


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("model", "first", "then"), [("fb", "last_responses", "last_chat"),
                                                      ("bf", "last_chat", "last_responses")],
                         ids=["native-then-chat", "chat-then-native"])
def test_a_fallback_of_the_other_api_gets_the_body_of_its_own_wire(rig, model, first, then, stream) -> None:
    g, sim = rig
    prompt = f"Tell me a story of {model} {stream}."  # its own, to find in what the sim last got on each route
    sim.faults(error_status=503, error_count=1)  # the first attempt fails, whichever route of the sim it took
    try:
        r = post(g, {"model": model, "stream": stream, "input": prompt, "max_output_tokens": 8})
    finally:
        sim.clear_faults()
    assert r.status_code == 200, r.text
    output = output_of(r, stream, "response.completed", "response.incomplete")
    assert texts(output).strip()
    got = sim.stats()
    assert prompt in json.dumps(got[first]["body"]) and prompt in json.dumps(got[then]["body"])  # tried one, then the other
    body = got[then]["body"]
    assert body["model"] == "sim-small" and ("messages" in body) == (then == "last_chat")
    assert r.headers["x-sluice-route"].endswith("@chat" if then == "last_chat" else "@native")


def test_other_apis_to_a_responses_upstream_are_refused_by_name_and_the_reverse(rig) -> None:
    g, sim = rig
    before = sim.stats()["requests_total"]
    with openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0) as oa:
        with pytest.raises(openai.BadRequestError) as chat:
            oa.chat.completions.create(model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as legacy:
            oa.completions.create(model="sim-small", max_tokens=5, prompt="hi")
    for refused in (chat, legacy):
        assert refused.value.code == "wrong_api" and "/v1/responses" in refused.value.message
    with anthropic.Anthropic(base_url=g.url, api_key=g.keys["app"], max_retries=0) as claude:
        with pytest.raises(anthropic.BadRequestError) as messages:
            claude.messages.create(model="sim-small", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert "/v1/responses" in messages.value.message
    r = post(g, {"model": "sim-claude", "input": "hi"})  # and the reverse: a Responses request to a Messages upstream
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_api" and "/v1/messages" in r.text, r.text
    assert sim.stats()["requests_total"] == before  # none reached the upstream
