"""The sim speaks OpenAI's Responses API natively: the official ``openai`` SDK against a real sim
process, whole and streamed, with ``sim:say``/``sim:call``, limits and faults; and the same work
through the chat route, translated by ``sluice.wire.responses``, gives the same output and tokens."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import openai
import pytest
from openai.types.responses import Response

sys.path.insert(0, str(Path(__file__).resolve().parent))
from responses_grammar import parse_sse, validate  # noqa: E402
from support import Sim  # noqa: E402

from sluice.wire.responses import StreamEncoder, encode_response, parse, to_chat  # noqa: E402

TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city.",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
CALL = 'sim:call get_weather {"city": "Oslo", "days": [1, 2, 3]}'


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    s = Sim(tmp_path_factory.mktemp("sim-responses"))
    yield s
    s.stop()


@pytest.fixture
def client(sim: Sim) -> Iterator[openai.OpenAI]:
    c = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-sim-test", max_retries=0, timeout=10.0)
    yield c
    c.close()
    sim.clear_faults()


def raw_stream(sim: Sim, body: dict[str, Any]) -> list[tuple[str, dict]]:
    r = httpx.post(sim.url + "/v1/responses", json={**body, "stream": True}, timeout=10.0)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    return parse_sse(r.content)


def test_a_response_is_answered_in_the_responses_shape_with_its_tokens(sim: Sim, client: openai.OpenAI) -> None:
    ask = {"model": "sim-small", "instructions": "Be brief, and kind, and clear. " * 8, "input": "Tell me a story."}
    r = client.responses.create(**ask, max_output_tokens=7)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "sim-small"
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output[0].status == "incomplete"
    assert len(r.output_text.split()) == 7 and r.usage is not None
    assert r.usage.output_tokens == 7 and r.usage.input_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + 7
    Response.model_validate(r.model_dump())  # strictly, not only as the SDK constructs it
    events = raw_stream(sim, {**ask, "max_output_tokens": 7})  # streamed, the cut reply ends response.incomplete
    assert validate(events) == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"} and final["output"][0]["status"] == "incomplete"
    assert final["output"][0]["content"][0]["text"] == r.output_text
    again = client.responses.create(**ask, max_output_tokens=7)  # the prefix cache served the prompt the second time
    assert again.output_text == r.output_text and again.usage.input_tokens_details.cached_tokens > 0  # type: ignore[union-attr]


def test_a_stream_passes_the_grammar_and_the_sdk_assembles_the_whole_reply(sim: Sim, client: openai.OpenAI) -> None:
    ask = {"model": "sim-small", "max_output_tokens": 5000, "input": [{"role": "user", "content": "Write a poem."}]}
    assert validate(raw_stream(sim, ask)) == "response.completed"
    with client.responses.stream(**ask) as s:
        text = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    whole = client.responses.create(**ask)
    assert final.output_text == text == whole.output_text and text
    assert final.status == whole.status == "completed"
    assert final.usage.output_tokens == whole.usage.output_tokens == len(text.split())  # type: ignore[union-attr]
    events = list(client.responses.create(**ask, stream=True))  # the SDK's raw event stream
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_a_streamed_function_call_reaches_the_sdk_with_its_whole_arguments(sim: Sim, client: openai.OpenAI) -> None:
    ask = {"model": "sim-small", "tools": TOOLS, "input": [{"role": "user", "content": [{"type": "input_text", "text": CALL}]}]}
    events = raw_stream(sim, ask)
    assert validate(events) == "response.completed"
    assert sum(e[0] == "response.function_call_arguments.delta" for e in events) > 3
    with client.responses.stream(**ask) as s:
        snapshots = [e.snapshot for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    whole = client.responses.create(**ask)
    for r in (final, whole):
        [call] = r.output
        assert call.type == "function_call" and call.name == "get_weather" and call.call_id.startswith("call_")
        assert json.loads(call.arguments) == {"city": "Oslo", "days": [1, 2, 3]}
    assert snapshots[-1] == final.output[0].arguments  # type: ignore[union-attr]  # the SDK accumulated every delta


def test_sim_say_answers_with_exactly_its_pieces(sim: Sim) -> None:
    events = raw_stream(sim, {"model": "sim-small", "input": "sim:say one |two |three"})
    assert [e[1]["delta"] for e in events if e[0] == "response.output_text.delta"] == ["one ", "two ", "three"]


def test_a_chain_is_refused_since_the_sim_stores_nothing(sim: Sim, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model="sim-small", input="hi", previous_response_id="resp_1")
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_injected_errors_are_openai_errors_the_sdk_raises_by_type(sim: Sim, client: openai.OpenAI) -> None:
    for status, error in ((429, openai.RateLimitError), (500, openai.InternalServerError), (503, openai.InternalServerError)):
        sim.faults(error_status=status, retry_after=3)
        with pytest.raises(error) as err:
            client.responses.create(model="sim-small", input="hi")
        assert err.value.status_code == status and err.value.body["message"].startswith("injected fault")  # type: ignore[index]
        if status != 500:
            assert err.value.response.headers["retry-after"] == "3"
    sim.clear_faults()
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="hi")
    r = httpx.post(sim.url + "/v1/responses", json={"model": "sim-small"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_cut_stream_raises_in_the_sdk(sim: Sim, client: openai.OpenAI) -> None:
    sim.faults(disconnect_after_chunks=2)
    with pytest.raises((openai.APIConnectionError, httpx.HTTPError, RuntimeError)):
        with client.responses.stream(model="sim-small", input="Tell me a story.", max_output_tokens=50) as s:
            s.get_final_response()


CONVERSATION: dict[str, Any] = {
    "model": "sim-small", "max_output_tokens": 4000, "tools": TOOLS, "instructions": "You are a careful agent.",
    "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Answer in English."}]},
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"type": "reasoning", "summary": [], "encrypted_content": "gAAAA"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"},
        {"type": "function_call", "call_id": "call_2", "name": "get_weather", "arguments": "{\"city\": \"Bergen\"}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "Rain, 7 degrees."},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "Sun, 9 degrees."}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Summarise it for me."}]},
    ],
}


@pytest.mark.parametrize("last", ["Summarise it for me.", CALL], ids=["text", "tool_call"])
def test_native_and_translated_give_the_same_output_and_tokens(sim: Sim, client: openai.OpenAI, last: str) -> None:
    ask = json.loads(json.dumps(CONVERSATION))
    ask["input"][-1]["content"][0]["text"] = last
    native_whole = client.responses.create(**ask)
    with client.responses.stream(**ask) as s:
        native_stream = s.get_final_response()
    # Translated: the same request decoded by sluice.wire, sent to the sim's chat route, encoded back.
    req = parse(json.dumps(ask).encode())
    chat = msgspec.to_builtins(to_chat(req).request)
    reply = httpx.post(sim.url + "/v1/chat/completions", json=chat, timeout=10.0)
    translated_whole = Response.model_validate(encode_response(reply.content, id="resp_t", request=req, created_at=1))
    enc = StreamEncoder(id="resp_t", request=req, created_at=1)
    with httpx.stream("POST", sim.url + "/v1/chat/completions", timeout=10.0,
                      json={**chat, "stream": True, "stream_options": {"include_usage": True}}) as r:
        out = enc.start() + b"".join(enc.feed(piece) for piece in r.iter_bytes()) + enc.close()
    events = parse_sse(out)
    assert validate(events) == "response.completed"
    translated_stream = Response.model_validate(events[-1][1]["response"])
    shapes = [_shape(r) for r in (native_whole, native_stream, translated_whole, translated_stream)]
    assert all(s == shapes[0] for s in shapes), shapes


def _shape(r: Response) -> dict[str, Any]:
    """What must agree between native and translated: items (ids aside), status, tokens."""
    items = [i.model_dump(include={"type", "role", "name", "arguments", "content", "status"}) for i in r.output]
    for item in items:
        for part in item.get("content") or ():
            part.pop("logprobs", None)
            part.pop("parsed", None)  # the SDK's stream helper adds it
    assert r.usage is not None
    return {"output": items, "status": r.status, "output_tokens": r.usage.output_tokens, "input_tokens": r.usage.input_tokens}


@pytest.mark.parametrize("body", [
    {"model": "sim-small"}, {"model": "sim-small", "input": 5}, {"model": "sim-small", "input": [5]},
    {"model": "sim-small", "input": "hi", "tools": ["x"]}, {"model": "sim-small", "input": "hi", "max_output_tokens": 0},
    {"model": "sim-small", "input": "hi", "instructions": ["x"]}, {"model": "sim-small", "input": "hi", "metadata": {"k": 1}},
])
def test_a_body_of_the_wrong_shape_is_a_400_in_openais_envelope(sim: Sim, body: dict[str, Any]) -> None:
    r = httpx.post(sim.url + "/v1/responses", json=body, timeout=10.0)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_odd_items_a_lenient_backend_reads_around_are_answered(sim: Sim) -> None:
    odd = [{"type": "message", "role": "user", "content": {"not": "a list"}}, {"type": "web_search_call", "id": "ws_1"},
           {"type": "message", "role": "user", "content": [{"type": "input_text", "text": 5}, "x"]}, {"role": "user", "content": "hi"}]
    r = httpx.post(sim.url + "/v1/responses", json={"model": "sim-small", "input": odd, "max_output_tokens": 3,
                                                    "tools": [{"type": 5}]}, timeout=10.0)
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 3, r.text
