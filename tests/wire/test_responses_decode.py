"""Responses requests decode into the chat request by the translation table (Codex's shapes as
goldens); what cannot be translated is dropped by a named rule or refused by name; bad input is
an OpenAI-shaped 400 whose ``param`` names the field and that quotes nothing sent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.core.errors import GatewayError, InvalidRequest, RateLimited
from sluice.core.wire import ChatCompletionRequest
from sluice.wire.responses import DROP_RULES, error_bytes, input_items, parse, to_chat

GOLDEN = Path(__file__).parent / "golden" / "responses"
CASES = sorted(GOLDEN.glob("*.json"))
SECRET = "s3cr3t-payload-value"


def _body(over: dict[str, Any] | None = None, **fields: Any) -> bytes:
    return json.dumps({"model": "m", "input": "hi", **(over or {}), **fields}).encode()


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_codex_and_sdk_request_shapes_translate_to_their_golden_chat_requests(path: Path) -> None:
    case = json.loads(path.read_text())
    translated = to_chat(parse(json.dumps(case["responses"]).encode()), case.get("history", []))
    assert msgspec.to_builtins(translated.request) == case["chat"]
    # The translation is a valid chat request as the pipeline's own decoder reads it.
    again = msgspec.json.decode(msgspec.json.encode(translated.request), type=ChatCompletionRequest)
    assert again == translated.request
    assert translated.dropped == case["dropped"]
    assert set(translated.dropped) <= set(DROP_RULES)  # every drop has a documented rule


def test_a_chain_translates_the_same_from_its_stored_items_as_sent_whole() -> None:
    """The history the gateway keeps (input_items of a request, then its output) translates as the
    same conversation sent in one request does."""
    first = parse(_body(input=[{"role": "user", "content": "Weather in Oslo?"}]))
    output = [{"id": "fc_r_0", "type": "function_call", "status": "completed", "call_id": "call_1",
               "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}]
    history = input_items(first) + output
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    answer = [{"type": "function_call_output", "call_id": "call_1", "output": "Rain."}]
    chained = to_chat(parse(_body(input=answer, tools=tools, previous_response_id="resp_r")), history)
    whole = to_chat(parse(_body(input=[{"role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
                                       {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                                        "arguments": "{\"city\": \"Oslo\"}"}, *answer], tools=tools)))
    assert chained.request == whole.request


def test_input_items_are_the_stored_form_with_ids() -> None:
    req = parse(_body(input=[
        {"role": "user", "content": "hi"},
        {"type": "message", "role": "assistant", "content": "hello", "id": "msg_given"},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
        {"type": "reasoning", "summary": [], "encrypted_content": "gAAA"}]))
    items = input_items(req)
    assert [i["id"][:i["id"].index("_")] for i in items] == ["msg", "msg", "fc", "fco", "rs"]
    assert items[1]["id"] == "msg_given"
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}]
    assert items[1]["content"] == [{"type": "output_text", "text": "hello", "annotations": []}]
    assert all(i["status"] == "completed" for i in items[:4]) and len({i["id"] for i in items}) == 5
    assert input_items(parse(_body()))[0]["content"] == [{"type": "input_text", "text": "hi"}]
    # The stored form is what the SDK lists (ResponseItem), and it reads back as the same conversation.
    from openai.types.responses.response_item import ResponseItem
    from pydantic import TypeAdapter
    TypeAdapter(list[ResponseItem]).validate_python(items[:4])
    assert _texts(to_chat(parse(_body(input=[])), items).request) == _texts(to_chat(req).request)


def _texts(req: ChatCompletionRequest) -> list[tuple[str, Any]]:
    """(role, text) of each message: a string content and its one text part read the same to a chat template."""
    return [(m.role, "".join(p["text"] for p in m.content) if isinstance(m.content, list) else m.content)
            for m in req.messages]


def test_a_function_call_output_without_its_call_is_a_400_naming_the_field() -> None:
    orphan = [{"type": "function_call_output", "call_id": "call_nowhere", "output": SECRET}]
    with pytest.raises(InvalidRequest) as err:
        to_chat(parse(_body(input=orphan)))
    assert err.value.param == "input[0].call_id" and SECRET not in err.value.message
    call = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}
    answer = {"type": "function_call_output", "call_id": "call_1", "output": "ok"}
    assert to_chat(parse(_body(input=[call, answer]))).request.messages[-1].tool_call_id == "call_1"
    with pytest.raises(InvalidRequest) as late:  # an answer before its call is no answer
        to_chat(parse(_body(input=[{"role": "user", "content": "go"}, answer, call])))
    assert late.value.param == "input[1].call_id"
    # the call may be in the history the gateway resolved from previous_response_id
    history = [{"id": "fc_1", "type": "function_call", "status": "completed", **{k: call[k] for k in ("call_id", "name", "arguments")}}]
    assert to_chat(parse(_body(input=[answer])), history).request.messages[-1].tool_call_id == "call_1"


def test_consecutive_function_calls_join_one_assistant_message_and_reasoning_does_not_split_them() -> None:
    calls = [{"type": "function_call", "call_id": f"c{k}", "name": "f", "arguments": "{}"} for k in range(3)]
    thought = {"type": "reasoning", "summary": []}
    items = [{"role": "user", "content": "go"}, calls[0], thought, calls[1],
             {"type": "function_call_output", "call_id": "c0", "output": "a"}, calls[2]]
    messages = to_chat(parse(_body(input=items))).request.messages
    assert [m.role for m in messages] == ["user", "assistant", "tool", "assistant"]
    assert [c["id"] for c in messages[1].tool_calls] == ["c0", "c1"] and messages[1].content is None  # type: ignore[union-attr]
    assert [c["id"] for c in messages[3].tool_calls] == ["c2"]  # type: ignore[union-attr]


def test_the_request_echo_fields_are_not_sent_upstream_and_stream_asks_for_usage() -> None:
    req = to_chat(parse(_body(store=True, metadata={"a": "b"}, previous_response_id="resp_1", stream=True))).request
    sent = msgspec.to_builtins(req)
    assert "store" not in sent and "metadata" not in sent
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(("over", "param"), [
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
    ({"background_options": {"completion_window": "2h"}}, "background_options"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-1"}]}]}, "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "detail": "auto"}]}]}, "input[0].content[0].image_url"),
    ({"input": [{"role": "developer", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]}, "input[0].content[0].type"),
    ({"input": [{"role": "user", "content": "go"}, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file", "file_url": "https://x"}]}]},
     "input[2].output[0].type"),
])
def test_features_that_change_the_answer_are_refused_by_name(over: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(_body(over))
    assert err.value.param == param and err.value.status == 400, err.value.message
    assert param in err.value.message


@pytest.mark.parametrize(("over", "param"), [
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": {"type": "function", "name": "f"}}, "tool_choice"),
    ({"tool_choice": "required", "tools": [{"type": "web_search"}]}, "tool_choice"),  # hosted tools are dropped
    ({"tool_choice": {"type": "function", "name": "g"}, "tools": [{"type": "function", "name": "f"}]}, "tool_choice.name"),
    ({"input": []}, "input"),
])
def test_a_tool_choice_without_its_tool_or_an_empty_conversation_is_a_400(over: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_chat(parse(_body(over)))
    assert err.value.param == param


def test_dropped_features_are_reported_by_rule_and_not_sent() -> None:
    over = {"reasoning": {"effort": "low", "generate_summary": "concise", "context": "all_turns", "mode": "pro"},
            "top_logprobs": 3, "max_tool_calls": 2, "stream_options": {"include_obfuscation": False},
            "prompt_cache_retention": "24h", "prompt_cache_options": {"mode": "implicit"},
            "context_management": [{"type": "compaction", "compact_threshold": 1000}], "image": {"context_compression": "auto"},
            "access_programs": {"cyber": "standard"},
            "input": [{"type": "message", "role": "assistant", "phase": "commentary", "content": [
                {"type": "output_text", "text": "see [1]", "annotations": [{"type": "url_citation", "url": "https://x"}]}]},
                {"role": "user", "content": [{"type": "input_text", "text": "hi", "prompt_cache_breakpoint": {"mode": "explicit"}}]}]}
    t = to_chat(parse(_body(over)))
    assert t.dropped == ["message.phase", "output_text.annotations", "prompt_cache_breakpoint", "reasoning.summary",
                         "reasoning.context", "reasoning.mode", "stream_options", "max_tool_calls", "top_logprobs",
                         "prompt_cache_retention", "prompt_cache_options", "context_management", "image", "access_programs"]
    sent = msgspec.to_builtins(t.request)
    assert sent["reasoning_effort"] == "low" and not {"top_logprobs", "logprobs", "stream_options"} & set(sent)
    assert sent["messages"][0] == {"role": "assistant", "content": "see [1]"}


BAD = {
    "no model": ({"model": None}, "model"),
    "input a number": ({"input": 7}, "input"),
    "unknown item type": ({"input": [{"type": SECRET}]}, "input[0].type"),
    "item without type or role": ({"input": [{"content": SECRET}]}, "input[0].type"),
    "unknown item field": ({"input": [{"type": "message", "role": "user", "content": "x", "secret_field": SECRET}]},
                           "input[0].secret_field"),
    "unknown field, not a name": ({"input": [{"type": "message", "role": "user", "content": "x", SECRET: 1}]}, "input[0]"),
    "wrong role": ({"input": [{"role": SECRET, "content": "x"}]}, "input[0].role"),
    "content a number": ({"input": [{"role": "user", "content": 7}]}, "input[0].content"),
    "unknown part type": ({"input": [{"role": "user", "content": [{"type": SECRET}]}]}, "input[0].content[0].type"),
    "call without call_id": ({"input": [{"type": "function_call", "name": "f", "arguments": SECRET}]}, "input[0].call_id"),
    "arguments an object": ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {"a": SECRET}}]},
                            "input[0].arguments"),
    "output a number": ({"input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
    "reasoning summary a string": ({"input": [{"type": "reasoning", "summary": SECRET}]}, "input[0].summary"),
    "max_output_tokens a string": ({"max_output_tokens": SECRET}, "max_output_tokens"),
    "max_output_tokens zero": ({"max_output_tokens": 0}, "max_output_tokens"),
    "temperature above 2": ({"temperature": 2.5}, "temperature"),
    "top_p a list": ({"top_p": [SECRET]}, "top_p"),
    "unknown tool type": ({"tools": [{"type": "custom", "name": SECRET}]}, "tools[0].type"),
    "function tool without name": ({"tools": [{"type": "function", "parameters": {}}]}, "tools[0].name"),
    "parameters a list": ({"tools": [{"type": "function", "name": "f", "parameters": [SECRET]}]}, "tools[0].parameters"),
    "tool_choice unknown": ({"tool_choice": SECRET}, "tool_choice"),
    "tool_choice hosted": ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice.type"),
    "text format unknown": ({"text": {"format": {"type": SECRET}}}, "text.format.type"),
    "json_schema without schema": ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    "reasoning effort unknown": ({"reasoning": {"effort": SECRET}}, "reasoning.effort"),
    "include unknown": ({"include": [SECRET]}, "include[0]"),
    "metadata value a number": ({"metadata": {"k": 1}}, "metadata"),
    "metadata too many keys": ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    "store a string": ({"store": SECRET}, "store"),
    "stream a number": ({"stream": 1}, "stream"),
    "unknown top-level field": ({"secret_field": SECRET}, "secret_field"),
    "client_metadata a list": ({"client_metadata": [SECRET]}, "client_metadata"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_an_openai_400_naming_the_field_that_echoes_nothing(case: str) -> None:
    over, param = BAD[case]
    body = _body({k: v for k, v in over.items() if v is not None})
    if over.get("model", "") is None:
        body = json.dumps({"input": "hi"}).encode()
    with pytest.raises(InvalidRequest) as err:
        parse(body)
    exc = err.value
    assert exc.status == 400 and exc.param == param, (exc.message, exc.param)
    assert SECRET not in exc.message and exc.message
    assert json.loads(error_bytes(exc)) == {"error": {"message": exc.message, "type": "invalid_request_error",
                                                      "param": param, "code": exc.code}}


def test_a_body_that_is_not_json_or_not_an_object_is_a_400_that_echoes_nothing() -> None:
    for body in (b"{not json " + SECRET.encode(), b"\xff\xfe" + SECRET.encode(), b"[" * 100_000,
                 json.dumps([SECRET]).encode(), json.dumps(SECRET).encode()):
        with pytest.raises(InvalidRequest) as err:
            parse(body)
        assert SECRET not in err.value.message and err.value.status == 400


def test_missing_fields_and_unknown_ones_are_worded_as_openai_words_them() -> None:
    with pytest.raises(InvalidRequest) as missing:
        parse(json.dumps({"input": "hi"}).encode())
    assert (missing.value.message, missing.value.code) == ("Missing required parameter: 'model'.", "missing_required_parameter")
    with pytest.raises(InvalidRequest) as unknown:
        parse(_body(temprature=1))
    assert (unknown.value.message, unknown.value.code) == ("Unknown parameter: 'temprature'.", "unknown_parameter")


def test_a_stored_history_that_does_not_read_is_the_gateways_500_not_the_callers_400() -> None:
    for stored in ([{"type": "nonsense"}], [{"type": "message", "role": "user", "content": [{"type": "input_file"}]}]):
        with pytest.raises(GatewayError) as err:
            to_chat(parse(_body()), stored)
        assert err.value.status == 500 and not isinstance(err.value, InvalidRequest)


def test_errors_render_in_the_openai_envelope() -> None:
    exc = RateLimited("budget spent", retry_after=2)
    assert json.loads(error_bytes(exc)) == {"error": {"message": "budget spent", "type": "rate_limit_error",
                                                      "param": None, "code": "rate_limit_exceeded"}}


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                          | st.text(max_size=6), lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


def _places(value: Any, at: tuple = ()) -> list[tuple]:
    """Every place in a JSON document: the path of each value inside it."""
    keys = range(len(value)) if isinstance(value, list) else value.keys() if isinstance(value, dict) else ()
    return [p for k in keys for p in [(*at, k), *_places(value[k], (*at, k))]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(CASES), data=st.data())
def test_a_wrong_value_or_a_missing_one_anywhere_is_a_400_never_an_exception(path: Path, data: st.DataObject) -> None:
    case = json.loads(path.read_text())
    body = case["responses"]
    *parent_at, key = data.draw(st.sampled_from(_places(body)))
    parent = body
    for k in parent_at:
        parent = parent[k]
    if data.draw(st.booleans()) and isinstance(parent, dict):
        del parent[key]
    else:
        parent[key] = data.draw(json_value)
    try:
        req = parse(json.dumps(body).encode())
        input_items(req)
        to_chat(req, case.get("history", []))
    except InvalidRequest as exc:
        assert exc.status == 400 and exc.message
