"""Whole chat completions encode as Anthropic messages that the official SDK parses."""

from __future__ import annotations

import json

import anthropic
import pytest
from chat_streams import whole

from sluice.core.errors import UpstreamError
from sluice.wire.anthropic import encode_message, encode_message_bytes

USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 16}}


def test_a_text_and_tool_reply_encodes_as_the_sdk_reads_it() -> None:
    reply = whole(["I'll look."], [("call_1", "get_weather", ['{"city": "Oslo", "days": [1, 2]}'])], "tool_calls", USAGE)
    got = encode_message(reply_bytes(reply))
    assert got == {
        "id": "msg_abc123", "type": "message", "role": "assistant", "model": "sim-small",
        "content": [{"type": "text", "text": "I'll look."},
                    {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo", "days": [1, 2]}}],
        "stop_reason": "tool_use", "stop_sequence": None,
        "usage": {"input_tokens": 14, "output_tokens": 9, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 16},
    }
    message = anthropic.types.Message.model_validate_json(encode_message_bytes(reply_bytes(reply)))
    assert message.content[1].type == "tool_use" and message.content[1].input == {"city": "Oslo", "days": [1, 2]}
    assert message.usage.cache_read_input_tokens == 16 and message.usage.input_tokens == 14


def reply_bytes(reply: dict) -> bytes:
    return json.dumps(reply).encode()


@pytest.mark.parametrize(("finish", "vllm_stop", "reason", "sequence"), [
    ("stop", None, "end_turn", None),
    ("length", None, "max_tokens", None),
    ("tool_calls", None, "tool_use", None),
    ("stop", "END", "stop_sequence", "END"),
    ("stop", 128001, "end_turn", None),  # a stop token id, not a stop sequence
    ("content_filter", None, "refusal", None),
])
def test_finish_reasons_map_to_stop_reasons(finish: str, vllm_stop: object, reason: str, sequence: str | None) -> None:
    got = encode_message(reply_bytes(whole(["x"], [], finish, USAGE, stop_reason=vllm_stop)))  # type: ignore[arg-type]
    assert (got["stop_reason"], got["stop_sequence"]) == (reason, sequence)
    anthropic.types.Message.model_validate(got)


def test_a_tool_call_without_arguments_has_empty_input_and_bad_arguments_are_the_upstreams_fault() -> None:
    got = encode_message(reply_bytes(whole([], [("c", "now", [""])], "tool_calls", USAGE)))
    assert got["content"] == [{"type": "tool_use", "id": "c", "name": "now", "input": {}}]
    for bad in ('{"a": ', "[1, 2]", "null"):
        with pytest.raises(UpstreamError):
            encode_message(reply_bytes(whole([], [("c", "f", [bad])], "tool_calls", USAGE)))


def test_an_empty_reply_has_no_blocks_and_a_reply_without_choices_is_an_upstream_error() -> None:
    got = encode_message(reply_bytes(whole([], [], "stop", None)))
    assert got["content"] == [] and got["usage"]["output_tokens"] == 0
    anthropic.types.Message.model_validate(got)
    with pytest.raises(UpstreamError):
        encode_message(b'{"id": "x", "choices": []}')
