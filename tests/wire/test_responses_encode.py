"""Whole chat completions encode as Responses that the official SDK parses, echoing their request."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from chat_streams import whole
from openai.types.responses import Response

from sluice.core.errors import UpstreamError
from sluice.wire.responses import encode_response, parse, response_id

USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 16},
         "completion_tokens_details": {"reasoning_tokens": 4}}
PLAIN = parse(b'{"model": "sim-small", "input": "hi"}')


def _encode(reply: dict[str, Any], request: Any = PLAIN, id: str = "resp_abc") -> dict[str, Any]:
    return encode_response(json.dumps(reply).encode(), id=id, request=request, created_at=1700000000)


def test_a_text_and_tool_reply_encodes_as_the_sdk_reads_it() -> None:
    reply = whole(["I'll look."], [("call_1", "get_weather", ['{"city": "Oslo", "days": [1, 2]}'])], "tool_calls", USAGE)
    got = _encode(reply)
    assert got["output"] == [
        {"id": "msg_abc_0", "type": "message", "status": "completed", "role": "assistant",
         "content": [{"type": "output_text", "text": "I'll look.", "annotations": [], "logprobs": []}]},
        {"id": "fc_abc_1", "type": "function_call", "status": "completed", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city": "Oslo", "days": [1, 2]}'},
    ]
    assert got["usage"] == {"input_tokens": 30, "input_tokens_details": {"cached_tokens": 16, "cache_write_tokens": 0},
                            "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 39}
    assert (got["id"], got["object"], got["status"], got["created_at"], got["error"], got["incomplete_details"]) == \
        ("resp_abc", "response", "completed", 1700000000, None, None)
    assert got["model"] == "sim-small"  # the model the caller asked for, not the upstream's name for it
    r = Response.model_validate(got)
    assert r.output_text == "I'll look." and r.output[1].type == "function_call"
    assert json.loads(r.output[1].arguments) == {"city": "Oslo", "days": [1, 2]}  # type: ignore[union-attr]
    assert r.usage is not None and r.usage.input_tokens_details.cached_tokens == 16


def test_the_reasoning_text_of_a_reply_is_a_reasoning_item_before_the_message() -> None:
    reply = whole(["Yes."], [], "stop", USAGE)
    reply["choices"][0]["message"]["reasoning_content"] = "The user asks; answer briefly."
    got = _encode(reply)
    assert [i["type"] for i in got["output"]] == ["reasoning", "message"]
    assert got["output"][0] == {"id": "rs_abc_0", "type": "reasoning", "status": "completed", "summary": [],
                                "content": [{"type": "reasoning_text", "text": "The user asks; answer briefly."}]}
    Response.model_validate(got)
    newer = whole(["Yes."], [], "stop", USAGE)
    newer["choices"][0]["message"]["reasoning"] = "The user asks; answer briefly."  # vLLM's newer name
    assert _encode(newer)["output"] == got["output"]


@pytest.mark.parametrize(("finish", "status", "reason"), [
    ("stop", "completed", None), ("tool_calls", "completed", None),
    ("length", "incomplete", "max_output_tokens"), ("content_filter", "incomplete", "content_filter"),
])
def test_finish_reasons_map_to_status_and_the_cut_item_is_incomplete(finish: str, status: str, reason: str | None) -> None:
    got = _encode(whole(["a", "b"], [], finish, USAGE))
    assert got["status"] == status and got["output"][-1]["status"] == ("incomplete" if reason else "completed")
    assert got["incomplete_details"] == ({"reason": reason} if reason else None)
    Response.model_validate(got)


def test_a_call_without_arguments_has_an_empty_object_and_bad_arguments_are_the_upstreams_fault() -> None:
    got = _encode(whole([], [("c", "now", [""])], "tool_calls", USAGE))
    assert got["output"][0]["arguments"] == "{}"
    for bad in ('{"a": ', "[1, 2]", "null"):
        with pytest.raises(UpstreamError):
            _encode(whole([], [("c", "f", [bad])], "tool_calls", USAGE))
    # cut by max_output_tokens mid-arguments: kept as they are, on an incomplete item
    cut = _encode(whole([], [("c", "f", ['{"a": '])], "length", USAGE))
    assert cut["output"][0]["arguments"] == '{"a": ' and cut["output"][0]["status"] == "incomplete"


def test_an_empty_reply_has_no_items_and_a_reply_without_choices_is_an_upstream_error() -> None:
    got = _encode(whole([], [], "stop", None))
    assert got["output"] == [] and got["usage"]["output_tokens"] == 0
    Response.model_validate(got)
    with pytest.raises(UpstreamError):
        encode_response(b'{"id": "x", "choices": []}', id="resp_x", request=PLAIN, created_at=1)


def test_the_response_echoes_what_the_request_asked_for_and_defaults_the_rest() -> None:
    tools = [{"type": "function", "name": "f", "description": "F.", "parameters": {"type": "object"}, "strict": True},
             {"type": "web_search"}]
    req = parse(json.dumps({
        "model": "sim-small", "input": "hi", "instructions": "Be brief.", "tools": tools,
        "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False, "temperature": 0.5, "top_p": 0.9,
        "max_output_tokens": 64, "previous_response_id": "resp_prev", "store": False, "metadata": {"k": "v"},
        "text": {"format": {"type": "json_object"}, "verbosity": "low"}, "reasoning": {"effort": "low"},
        "truncation": "auto", "user": "u-1", "prompt_cache_key": "thread-1"}).encode())
    got = _encode(whole(["x"], [], "stop", USAGE), req)
    expected = {"instructions": "Be brief.", "tool_choice": {"type": "function", "name": "f"},
                "tools": [{"type": "function", "name": "f", "description": "F.", "parameters": {"type": "object"}, "strict": True}],
                "parallel_tool_calls": False, "temperature": 0.5, "top_p": 0.9, "max_output_tokens": 64,
                "previous_response_id": "resp_prev", "store": False, "metadata": {"k": "v"},
                "text": {"format": {"type": "json_object"}, "verbosity": "low"}, "reasoning": {"effort": "low"},
                "truncation": "auto", "user": "u-1", "prompt_cache_key": "thread-1", "background": False}
    assert {k: got[k] for k in expected} == expected  # the hosted tool is not echoed: it does not run here
    Response.model_validate(got)
    plain = _encode(whole(["x"], [], "stop", USAGE))
    defaults = {"instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True, "temperature": None,
                "top_p": None, "max_output_tokens": None, "previous_response_id": None, "store": True, "metadata": {},
                "text": {"format": {"type": "text"}}, "reasoning": None, "truncation": "disabled", "user": None}
    assert {k: plain[k] for k in defaults} == defaults


def test_response_ids_are_fresh() -> None:
    ids = {response_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"resp_[0-9a-f]{17,}", i) for i in ids)
