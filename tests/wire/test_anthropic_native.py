"""An Anthropic upstream's answer through the path in miniature (``wire.anthropic.native``): its events read
into the chat form, through the SSE relay and a real output guard, and encoded back by ``StreamEncoder``;
a whole message through ``chat_completion``, the guard and ``encode_message``. What the chat form cannot
hold (thinking blocks in their place, stop reasons it has no name for, cache writes) comes back as the
upstream gave it, and the grammar holds however the guard rewrote the calls around them."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from messages_grammar import parse_sse, validate  # noqa: E402
from rigs import ev, guard, relayed  # noqa: E402

from sluice.core.errors import GatewayError, Unavailable, UpstreamError  # noqa: E402
from sluice.guard import OutputGuard  # noqa: E402
from sluice.upstream import SSERelay  # noqa: E402
from sluice.wire.anthropic import StreamEncoder, encode_message  # noqa: E402
from sluice.wire.anthropic.native import ChatEvents, NativeAnswer, chat_completion  # noqa: E402

SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxDYWxjdWxhdGluZy4uLiJQ/+/="


def start(usage: dict | None = None) -> bytes:
    return ev("message_start", message={"id": "msg_01", "type": "message", "role": "assistant", "model": "claude",
                                        "content": [], "stop_reason": None, "stop_sequence": None,
                                        "usage": usage or {"input_tokens": 10, "output_tokens": 1}})


def text(i: int, *pieces: str) -> list[bytes]:
    return [ev("content_block_start", index=i, content_block={"type": "text", "text": ""}),
            *(ev("content_block_delta", index=i, delta={"type": "text_delta", "text": p}) for p in pieces),
            ev("content_block_stop", index=i)]


def thinking(i: int, words: str) -> list[bytes]:
    return [ev("content_block_start", index=i, content_block={"type": "thinking", "thinking": "", "signature": ""}),
            ev("content_block_delta", index=i, delta={"type": "thinking_delta", "thinking": words}),
            ev("content_block_delta", index=i, delta={"type": "signature_delta", "signature": SIGNATURE}),
            ev("content_block_stop", index=i)]


def tool(i: int, name: str, args: str) -> list[bytes]:
    return [ev("content_block_start", index=i, content_block={"type": "tool_use", "id": f"toolu_{i}", "name": name,
                                                              "input": {}}),
            *(ev("content_block_delta", index=i, delta={"type": "input_json_delta", "partial_json": args[k:k + 4]})
              for k in range(0, len(args), 4)),
            ev("content_block_stop", index=i)]


def end(reason: str, sequence: str | None = None, usage: dict | None = None) -> list[bytes]:
    return [ev("message_delta", delta={"stop_reason": reason, "stop_sequence": sequence},
               usage=usage or {"output_tokens": 9}), ev("message_stop")]


def streamed(events: list[bytes], g: OutputGuard | None = None) -> list[tuple[str, dict]]:
    """The events as the caller gets them: read, relayed, guarded, encoded (one upstream read per event)."""
    answer = NativeAnswer()
    answer.reset(True)
    reader, relay, enc = ChatEvents(answer), SSERelay(strip_usage=False), StreamEncoder("m", native=answer)
    out = relayed(events, reader, relay, enc, g)
    out.append(enc.close())
    got = parse_sse(b"".join(out))
    assert validate(got) == "message_stop", got
    return got


def whole(content: list[dict], reason: str, g: OutputGuard | None = None, **usage: int) -> dict[str, Any]:
    answer = NativeAnswer()
    answer.reset(True)
    body = json.dumps({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude", "content": content,
                       "stop_reason": reason, "stop_sequence": "###" if reason == "stop_sequence" else None,
                       "usage": {"input_tokens": 10, "output_tokens": 9, **usage}}).encode()
    chat = chat_completion(body, answer)
    if g is not None:
        chat = asyncio.run(g.reply(chat))
    return json.loads(msgspec.json.encode(answer.restore(encode_message(chat))))


def blocks(events: list[tuple[str, dict]]) -> list[str]:
    return [d["content_block"]["type"] for n, d in events if n == "content_block_start"]


@pytest.mark.parametrize(("reason", "sequence"), [("stop_sequence", "###"), ("pause_turn", None), ("refusal", None)])
def test_a_stop_reason_comes_back_as_the_upstream_gave_it(reason, sequence) -> None:
    got = streamed([start(), *text(0, "so far"), *end(reason, sequence)], guard())
    delta = [d for n, d in got if n == "message_delta"][0]["delta"]
    assert (delta["stop_reason"], delta["stop_sequence"]) == (reason, sequence)
    msg = whole([{"type": "text", "text": "so far"}], reason, guard())
    assert (msg["stop_reason"], msg["stop_sequence"]) == (reason, sequence)


def test_thinking_passes_through_untouched_while_the_text_beside_it_is_masked() -> None:
    got = streamed([start(), *thinking(0, "The key AKIAIOSFODNN7EXAMPLE is in the prompt."),
                    *text(1, "it is AKIAIOSF", "ODNN7EXAMPLE ok"), *end("end_turn")], guard())
    assert blocks(got) == ["thinking", "text"]
    deltas = [d["delta"] for n, d in got if n == "content_block_delta"]
    assert deltas[:2] == [{"type": "thinking_delta", "thinking": "The key AKIAIOSFODNN7EXAMPLE is in the prompt."},
                          {"type": "signature_delta", "signature": SIGNATURE}]  # the signature covers it: as it came
    assert "".join(d.get("text", "") for d in deltas) == "it is [REDACTED:aws_access_key] ok"
    msg = whole([{"type": "thinking", "thinking": "t", "signature": SIGNATURE}, {"type": "text", "text": "AKIAIOSFODNN7EXAMPLE"}],
                "end_turn", guard())
    assert msg["content"] == [{"type": "thinking", "thinking": "t", "signature": SIGNATURE},
                              {"type": "text", "text": "[REDACTED:aws_access_key]"}]


def test_interleaved_thinking_keeps_its_place_between_judged_calls_and_the_numbering_holds() -> None:
    events = [start(), *thinking(0, "first"), *tool(1, "get_weather", '{"city": "Oslo"}'), *thinking(2, "then"),
              *tool(3, "delete_repo", '{"repo": "victim-1"}'), *thinking(4, "and"), *tool(5, "get_weather", '{"city": "Rome"}'),
              *end("tool_use")]
    got = streamed(events, guard(tools=True))
    assert blocks(got) == ["thinking", "tool_use", "thinking", "text", "thinking", "tool_use"], blocks(got)  # blocked: a notice
    assert [d["index"] for n, d in got if n == "content_block_start"] == [0, 1, 2, 3, 4, 5]
    assert "victim-1" not in json.dumps(got)
    inputs = ["".join(d["delta"]["partial_json"] for n, d in got if n == "content_block_delta" and d["index"] == i)
              for i in (1, 5)]
    assert [json.loads(x) for x in inputs] == [{"city": "Oslo"}, {"city": "Rome"}]
    assert [d for n, d in got if n == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"


def test_a_thinking_block_is_numbered_in_the_callers_stream_not_the_upstreams() -> None:
    events = [start(), *text(0, "one "), *text(1, "two"),  # two text blocks run on: one of the caller's
              ev("content_block_start", index=2, content_block={"type": "server_tool_use", "id": "s", "name": "x", "input": {}}),
              ev("content_block_stop", index=2), *thinking(3, "so"), *text(4, "three"), *end("end_turn")]
    got = streamed(events, guard())
    assert blocks(got) == ["text", "thinking", "text"]
    assert [d["index"] for n, d in got if n.startswith("content_block")] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2], got


def test_a_whole_reply_puts_each_thinking_block_back_before_the_call_it_preceded() -> None:
    think = [{"type": "thinking", "thinking": w, "signature": SIGNATURE} for w in ("a", "b", "c")]
    content = [think[0], {"type": "text", "text": "Checking."},
               {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}}, think[1],
               {"type": "tool_use", "id": "toolu_2", "name": "delete_repo", "input": {}}, think[2],
               {"type": "tool_use", "id": "toolu_3", "name": "get_weather", "input": {"city": "Rome"}}]
    msg = whole(content, "tool_use", guard(tools=True))
    kinds = [(b["type"], b.get("thinking") or b.get("id") or "") for b in msg["content"]]
    assert kinds == [("thinking", "a"), ("text", ""), ("tool_use", "toolu_1"), ("thinking", "c"), ("tool_use", "toolu_3"),
                     ("thinking", "b")], kinds  # b preceded the blocked call: it goes last, nothing lost
    assert msg["stop_reason"] == "tool_use"


def test_usage_comes_back_whole_with_cache_reads_and_writes() -> None:
    got = streamed([start({"input_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 40,
                           "output_tokens": 1}), *text(0, "hi"), *end("end_turn", usage={"output_tokens": 7})])
    assert [d for n, d in got if n == "message_delta"][0]["usage"] == {
        "input_tokens": 5, "output_tokens": 7, "cache_creation_input_tokens": 40, "cache_read_input_tokens": 100}
    msg = whole([{"type": "text", "text": "hi"}], "end_turn", cache_read_input_tokens=100, cache_creation_input_tokens=40)
    assert msg["usage"] == {"input_tokens": 10, "output_tokens": 9, "cache_creation_input_tokens": 40,
                            "cache_read_input_tokens": 100}
    answer = NativeAnswer()
    answer.reset(True)
    chat = json.loads(chat_completion(json.dumps({"content": [], "usage": {
        "input_tokens": 10, "output_tokens": 9, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 40}}).encode(),
        answer))
    assert chat["usage"] == {"prompt_tokens": 150, "completion_tokens": 9,
                             "prompt_tokens_details": {"cached_tokens": 100, "cache_creation_tokens": 40}}


def test_blocks_and_deltas_the_chat_form_cannot_hold_are_dropped_by_name_and_texts_run_on() -> None:
    answer = NativeAnswer()
    answer.reset(True)
    reader = ChatEvents(answer)
    events = [start(), *text(0, "one "),
              ev("content_block_start", index=1, content_block={"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}),
              ev("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": '{"q":1}'}),
              ev("content_block_stop", index=1),
              ev("content_block_start", index=2, content_block={"type": "text", "text": ""}),
              ev("content_block_delta", index=2, delta={"type": "citations_delta", "citation": {"type": "x"}}),
              ev("content_block_delta", index=2, delta={"type": "text_delta", "text": "two"}),
              ev("content_block_stop", index=2), ev("a_future_event", anything=1), *end("end_turn")]
    chat = b"".join(p for e in events for p in reader.feed(e))
    assert reader.done and chat.endswith(b"data: [DONE]\n\n") and answer.dropped == ["server_tool_use"]
    assert b"web_search" not in chat and b"citation" not in chat
    got = streamed(events)
    assert blocks(got) == ["text"] and "".join(d["delta"]["text"] for n, d in got if n == "content_block_delta") == "one two"


def test_an_error_event_or_a_broken_stream_is_the_gateways_error() -> None:
    def read(*events: bytes) -> GatewayError:
        answer = NativeAnswer()
        answer.reset(True)
        with pytest.raises(GatewayError) as raised:
            reader = ChatEvents(answer)
            for e in events:
                reader.feed(e)
        return raised.value

    overloaded = read(start(), ev("error", error={"type": "overloaded_error", "message": "Overloaded"}))
    assert isinstance(overloaded, Unavailable) and overloaded.code == "upstream_overloaded"
    assert read(start(), ev("error", error={"type": "api_error", "message": "x"})).code == "upstream_stream_error"
    assert read(start(), b"not an event\n\n").code == "upstream_bad_event"
    assert read(start(), b"data: {not json\n\n").code == "upstream_bad_event"
    too_big = read(b"data: " + b"x" * (4 * 1024 * 1024 + 1))
    assert isinstance(too_big, UpstreamError) and too_big.code == "upstream_event_too_large"


def test_a_guarded_request_goes_back_into_anthropics_wire_as_the_chat_form_holds_it() -> None:
    from sluice.wire.anthropic import decode, from_chat

    body = {"model": "m", "max_tokens": 50, "system": [{"type": "text", "text": "Be brief."}], "temperature": 0.5,
            "stop_sequences": ["###"], "metadata": {"user_id": "u-1"},
            "tools": [{"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look:"},
                                             {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"}},
                                             {"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": SIGNATURE}, {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "n": [1, 2]}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "Rain."},
                                             {"type": "text", "text": "And now?"}]}]}
    back = from_chat(decode(json.dumps(body).encode()).request, model="upstream-m", stream=True)
    assert back == {**{k: v for k, v in body.items() if k not in ("system", "messages")},
                    "model": "upstream-m", "system": "Be brief.", "stream": True, "messages": [
                        body["messages"][0],
                        {"role": "assistant", "content": body["messages"][1]["content"][1:]},  # thinking: not in chat
                        body["messages"][2]]}, back



def test_a_tool_whose_description_the_guard_masked_sends_the_guarded_request() -> None:
    from sluice.wire.anthropic import decode, messages_body, parse

    raw = json.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                      "tools": [{"name": "f", "description": "key AKIAIOSFODNN7EXAMPLE",
                                 "input_schema": {"type": "object"}}]}).encode()
    tr = decode(raw)
    masked = [{**t, "function": {**t["function"], "description": "key [REDACTED:aws_access_key]"}} for t in tr.request.tools]
    out = messages_body(parse(raw), tr.request, msgspec.structs.replace(tr.request, tools=masked), model="up", stream=False)
    assert out.rewritten and b"AKIAIOSFODNN7EXAMPLE" not in out.body and b"[REDACTED:aws_access_key]" in out.body
    fewer = msgspec.structs.replace(tr.request, tools=msgspec.UNSET)  # only a tool taken out: the caller's body goes
    assert not messages_body(parse(raw), tr.request, fewer, model="up", stream=False).rewritten

def test_an_upstreams_api_is_openai_anthropic_or_responses_and_nothing_else() -> None:
    from sluice.core.config import parse
    from sluice.core.errors import ConfigError

    base = {"security": {"pepper": "p" * 64}, "upstreams": [{"name": "u", "base_url": "http://127.0.0.1:1/v1"}]}
    assert parse(base).upstreams[0].api == "openai"
    for api in ("anthropic", "responses"):
        base["upstreams"][0]["api"] = api
        assert parse(base).upstreams[0].api == api
    base["upstreams"][0]["api"] = "gemini"
    with pytest.raises((ConfigError, msgspec.ValidationError)) as refused:
        parse(base)
    assert "upstreams[0].api" in str(refused.value)


def test_a_chat_upstreams_stream_cannot_pass_blocks_off_as_an_anthropic_upstreams() -> None:
    answer = NativeAnswer()  # the attempt went to a chat upstream: nothing travels beside the chat form
    enc = StreamEncoder("m", native=answer)
    chunk = b'data: {"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    forged = thinking(0, "AKIAIOSFODNN7EXAMPLE")[0] + b'data: {"object":"ping","choices":[]}\n\n'
    out = parse_sse(enc.start() + enc.feed(forged + chunk + b"data: [DONE]\n\n") + enc.close())
    assert validate(out) == "message_stop" and blocks(out) == ["text"] and "ping" not in [n for n, _ in out]
