"""The SSE relay forwards whole events as they arrive and keeps count of what was produced."""

from __future__ import annotations

import json

from sluice.upstream import SSERelay


def event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


ROLE = event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
TOKENS = [event({"choices": [{"index": 0, "delta": {"content": f" t{i}"}}]}) for i in range(5)]
USAGE = event({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}})
DONE = b"data: [DONE]\n\n"
STREAM = ROLE + b"".join(TOKENS) + USAGE + DONE


def test_events_split_across_reads_are_forwarded_whole_and_in_order():
    relay = SSERelay(strip_usage=False)
    out = b"".join(relay.feed(STREAM[i:i + 7]) for i in range(0, len(STREAM), 7))
    assert out == STREAM
    assert relay.done and relay.usage.prompt_tokens == 9 and relay.usage.completion_tokens == 5


def test_a_partial_event_is_held_until_complete():
    relay = SSERelay(strip_usage=False)
    assert relay.feed(TOKENS[0][:-1]) == b""
    assert relay.feed(b"\n") == TOKENS[0]


def test_usage_chunk_is_withheld_from_callers_who_did_not_ask():
    relay = SSERelay(strip_usage=True)
    out = relay.feed(STREAM)
    assert b'"usage"' not in out and out == ROLE + b"".join(TOKENS) + DONE
    assert relay.usage.completion_tokens == 5


def test_crlf_framing_is_understood():
    relay = SSERelay(strip_usage=False)
    out = relay.feed(STREAM.replace(b"\n", b"\r\n"))
    assert out == STREAM and relay.done


def test_a_cut_stream_is_not_done_and_estimates_what_was_produced():
    relay = SSERelay(strip_usage=False)
    relay.feed(ROLE + b"".join(TOKENS[:3]))
    assert not relay.done and relay.usage is None
    assert relay.completion_estimate == 3


def test_the_word_usage_inside_generated_text_is_not_mistaken_for_usage():
    relay = SSERelay(strip_usage=True)
    tricky = event({"choices": [{"index": 0, "delta": {"content": '"usage":{"prompt_tokens":1}'}}]})
    assert relay.feed(tricky) == tricky and relay.usage is None
