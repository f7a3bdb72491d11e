"""The sim speaks Anthropic's Messages API natively: the official ``anthropic`` SDK against a real
sim process, whole and streamed, with ``sim:say``/``sim:call`` and faults; and the same work
through the chat route, translated by ``sluice.wire``, gives the same message and tokens."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "wire"))
from messages_grammar import parse_sse, validate  # noqa: E402
from support import Sim  # noqa: E402

from sluice.wire.anthropic import StreamEncoder, decode, encode_message  # noqa: E402

TOOLS = [{"name": "get_weather", "description": "Weather for a city.",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
CALL = 'sim:call get_weather {"city": "Oslo", "days": [1, 2, 3]}'


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sim]:
    s = Sim(tmp_path_factory.mktemp("sim-messages"))
    yield s
    s.stop()


@pytest.fixture
def client(sim: Sim) -> Iterator[anthropic.Anthropic]:
    c = anthropic.Anthropic(base_url=sim.url, api_key="sk-ant-sim-test", max_retries=0, timeout=10.0)
    yield c
    c.close()
    sim.clear_faults()


def raw_stream(sim: Sim, body: dict[str, Any]) -> list[tuple[str, dict]]:
    r = httpx.post(sim.url + "/v1/messages", json={**body, "stream": True}, timeout=10.0)
    assert r.status_code == 200, r.text
    return parse_sse(r.content)


def test_a_message_is_answered_in_anthropics_shape_with_its_tokens(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model="sim-small", max_tokens=7, system="Be brief.",
                                 messages=[{"role": "user", "content": "Tell me a story."}])
    assert msg.type == "message" and msg.role == "assistant" and msg.id.startswith("msg_")
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 7
    assert msg.content[0].type == "text" and len(msg.content[0].text.split()) == 7
    counted = client.messages.count_tokens(model="sim-small", system="Be brief.",
                                           messages=[{"role": "user", "content": "Tell me a story."}])
    assert counted.input_tokens == msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0) > 0


def test_a_stream_passes_the_grammar_and_the_sdk_assembles_the_whole_reply(sim: Sim, client: anthropic.Anthropic) -> None:
    ask = {"model": "sim-small", "max_tokens": 5000, "messages": [{"role": "user", "content": "Write a poem."}]}
    events = raw_stream(sim, ask)
    assert validate(events) == "message_stop"
    with client.messages.stream(**ask) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    whole = client.messages.create(**ask)
    assert final.content[0].text == text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == whole.stop_reason == "end_turn"
    assert final.usage.output_tokens == whole.usage.output_tokens > 0


def test_sim_call_streams_tool_use_whose_input_json_deltas_make_the_whole_arguments(sim: Sim, client: anthropic.Anthropic) -> None:
    ask = {"model": "sim-small", "max_tokens": 64, "tools": TOOLS,
           "messages": [{"role": "user", "content": [{"type": "text", "text": CALL}]}]}
    events = raw_stream(sim, ask)
    assert validate(events) == "message_stop"
    assert sum(e[1]["delta"]["type"] == "input_json_delta" for e in events if e[0] == "content_block_delta") > 3
    with client.messages.stream(**ask) as s:
        final = s.get_final_message()
    whole = client.messages.create(**ask)
    for m in (final, whole):
        assert m.stop_reason == "tool_use"
        block = m.content[0]
        assert block.type == "tool_use" and block.name == "get_weather"
        assert block.input == {"city": "Oslo", "days": [1, 2, 3]}


def test_sim_say_answers_with_exactly_its_pieces(sim: Sim) -> None:
    events = raw_stream(sim, {"model": "sim-small", "max_tokens": 64,
                              "messages": [{"role": "user", "content": "sim:say one |two |three"}]})
    assert [e[1]["delta"]["text"] for e in events if e[0] == "content_block_delta"] == ["one ", "two ", "three"]


def test_injected_errors_are_anthropic_errors_the_sdk_raises_by_type(sim: Sim, client: anthropic.Anthropic) -> None:
    ask = {"model": "sim-small", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    for status, error in ((529, anthropic.OverloadedError), (429, anthropic.RateLimitError),
                          (500, anthropic.InternalServerError)):
        sim.faults(error_status=status)
        with pytest.raises(error) as err:
            client.messages.create(**ask)
        assert err.value.body["type"] == "error"  # type: ignore[index]
    sim.clear_faults()
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(**{**ask, "model": "no-such-model"})
    r = httpx.post(sim.url + "/v1/messages", json={"model": "sim-small", "messages": ask["messages"]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_cut_stream_raises_in_the_sdk(sim: Sim, client: anthropic.Anthropic) -> None:
    sim.faults(disconnect_after_chunks=2)
    with pytest.raises((anthropic.APIConnectionError, httpx.HTTPError)):
        with client.messages.stream(model="sim-small", max_tokens=50,
                                    messages=[{"role": "user", "content": "Tell me a story."}]) as s:
            s.get_final_message()


def test_anthropic_headers_of_the_last_request_are_recorded_for_native_path_tests(sim: Sim, client: anthropic.Anthropic) -> None:
    client.messages.create(model="sim-small", max_tokens=2, messages=[{"role": "user", "content": "hi"}],
                           extra_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "context-management-2025-06-27"})
    last = sim.stats()["last_messages"]
    assert last["anthropic-version"] == "2023-06-01"
    assert last["anthropic-beta"] == "context-management-2025-06-27"


CONVERSATION = {
    "model": "sim-small", "max_tokens": 40, "tools": TOOLS,
    "system": [{"type": "text", "text": "You are a careful agent.", "cache_control": {"type": "ephemeral"}}],
    "messages": [
        {"role": "user", "content": "What is the weather in Oslo?"},
        {"role": "assistant", "content": [{"type": "text", "text": "Let me check."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Rain, 7 degrees."},
                                     {"type": "text", "text": "Summarise it for me."}]},
    ],
}


@pytest.mark.parametrize("last", ["Summarise it for me.", CALL], ids=["text", "tool_call"])
def test_native_and_translated_give_the_same_message_and_tokens(sim: Sim, client: anthropic.Anthropic, last: str) -> None:
    ask = json.loads(json.dumps(CONVERSATION))
    ask["messages"][-1]["content"][-1]["text"] = last
    native_whole = client.messages.create(**ask)
    with client.messages.stream(**ask) as s:
        native_stream = s.get_final_message()
    # Translated: the same request decoded by sluice.wire, sent to the sim's chat route, encoded back.
    chat = decode(json.dumps(ask).encode()).request
    with openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-sim-test", max_retries=0) as oa:
        whole = oa.chat.completions.with_raw_response.create(**{**_builtins(chat), "stream": False,
                                                                 "stream_options": None}).http_response.content
        translated_whole = anthropic.types.Message.model_validate(encode_message(whole))
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json={**_builtins(chat), "stream": True,
                                                                      "stream_options": {"include_usage": True}}) as r:
        enc = StreamEncoder("sim-small", input_tokens=0)
        out = b"".join(enc.feed(piece) for piece in r.iter_bytes()) + enc.close()
    events = parse_sse(out)
    assert validate(events) == "message_stop"
    translated_stream = _assemble(events)
    shapes = [_shape(m) for m in (native_whole, native_stream, translated_whole, translated_stream)]
    assert all(s == shapes[0] for s in shapes), shapes


def _builtins(req: Any) -> dict[str, Any]:
    import msgspec
    return msgspec.to_builtins(req)


def _assemble(events: list[tuple[str, dict]]) -> anthropic.types.Message:
    from anthropic.lib.streaming._messages import accumulate_event
    from pydantic import TypeAdapter
    adapter = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    snap, bufs = None, {}
    for _, data in events:
        if data["type"] != "ping":
            snap = accumulate_event(event=adapter.validate_python(data), current_snapshot=snap, json_bufs=bufs)
    return anthropic.types.Message.model_validate(snap.model_dump())  # type: ignore[union-attr]


def _shape(m: anthropic.types.Message) -> dict[str, Any]:
    """What must agree between native and translated: blocks (tool ids aside), stop reason, tokens."""
    blocks = [b.model_dump(exclude={"id", "citations"}) for b in m.content]
    u = m.usage
    return {"content": blocks, "stop_reason": m.stop_reason, "output_tokens": u.output_tokens,
            "prompt_tokens": u.input_tokens + (u.cache_read_input_tokens or 0) + (u.cache_creation_input_tokens or 0)}
