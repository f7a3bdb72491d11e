"""A Responses upstream's answer through the path in miniature (``wire.responses.native``): its events read
into the chat form, through the SSE relay and a real output guard, and encoded back by ``StreamEncoder``;
a whole Response through ``chat_completion`` and ``encode_response``. And what is sent to it
(``native_body``): the chain and this request's items with ``store: false``, or the guarded request written
back in the Responses wire (``from_chat``) when the input guard rewrote it."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from responses_grammar import parse_sse, validate  # noqa: E402
from rigs import ev, guard, relayed  # noqa: E402

from sluice.core.errors import GatewayError, RateLimited, UpstreamError  # noqa: E402
from sluice.core.wire import Message  # noqa: E402
from sluice.guard import OutputGuard  # noqa: E402
from sluice.upstream import SSERelay  # noqa: E402
from sluice.wire import responses  # noqa: E402
from sluice.wire.responses.native_body import rewritten  # noqa: E402

REQ = responses.parse(b'{"model": "m", "input": "hi"}')


def message(i: int, *pieces: str) -> list[bytes]:
    where = {"item_id": f"msg_{i}", "output_index": i}
    return [ev("response.output_item.added", output_index=i, item={"id": f"msg_{i}", "type": "message", "role": "assistant",
                                                                    "status": "in_progress", "content": []}),
            ev("response.content_part.added", **where, content_index=0, part={"type": "output_text", "text": ""}),
            *(ev("response.output_text.delta", **where, content_index=0, delta=p) for p in pieces),
            ev("response.output_text.done", **where, content_index=0, text="".join(pieces)),
            ev("response.output_item.done", output_index=i, item={"id": f"msg_{i}", "type": "message"})]


def call(i: int, name: str, args: str, *, deltas: bool = True) -> list[bytes]:
    where = {"item_id": f"fc_{i}", "output_index": i}
    item = {"id": f"fc_{i}", "type": "function_call", "call_id": f"call_{i}", "name": name, "arguments": ""}
    return [ev("response.output_item.added", output_index=i, item=item),
            *((ev("response.function_call_arguments.delta", **where, delta=args[k:k + 4]) for k in range(0, len(args), 4))
              if deltas else ()),
            ev("response.function_call_arguments.done", **where, arguments=args),
            ev("response.output_item.done", output_index=i, item={**item, "arguments": args, "status": "completed"})]


def reasoning(i: int, words: str) -> list[bytes]:
    return [ev("response.output_item.added", output_index=i, item={"id": f"rs_{i}", "type": "reasoning", "summary": []}),
            ev("response.reasoning_text.delta", item_id=f"rs_{i}", output_index=i, content_index=0, delta=words),
            ev("response.output_item.done", output_index=i, item={"id": f"rs_{i}", "type": "reasoning", "summary": []})]


USAGE = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 7,
         "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 19}


def end(kind: str = "response.completed", reason: str | None = None) -> list[bytes]:
    resp = {"id": "resp_up", "status": kind.removeprefix("response."), "output": [], "usage": USAGE,
            "incomplete_details": {"reason": reason} if reason else None}
    return [ev(kind, response=resp)]


def streamed(events: list[bytes], g: OutputGuard | None = None, *, split: int = 0) -> list[tuple[str, dict]]:
    """The events as the caller gets them: read, relayed, guarded, encoded (``split``: bytes per upstream read,
    else one read per event)."""
    raw = b"".join(events)
    reads = [raw[k:k + split] for k in range(0, len(raw), split)] if split else events
    reader, relay = responses.NativeEvents(), SSERelay(strip_usage=False)
    enc = responses.StreamEncoder(id="resp_gw", request=REQ, created_at=1)
    out = relayed(reads, reader, relay, enc, g)
    assert relay.done and reader.done
    out.append(enc.close())
    return parse_sse(b"".join(out))


def final(events: list[tuple[str, dict]]) -> dict:
    return events[-1][1]["response"]


def test_a_secret_split_across_output_text_deltas_is_masked_and_the_usage_read() -> None:
    got = streamed([*message(0, "it is AKIAIOSF", "ODNN7EXAMPLE ok"), *end()], guard())
    assert validate(got) == "response.completed"
    deltas = "".join(d["delta"] for n, d in got if n == "response.output_text.delta")
    assert deltas == "it is [REDACTED:aws_access_key] ok", deltas
    use = final(got)["usage"]
    assert (use["input_tokens"], use["input_tokens_details"]["cached_tokens"], use["output_tokens"],
            use["output_tokens_details"]["reasoning_tokens"]) == (12, 4, 7, 2)


@pytest.mark.parametrize("split", [0, 1, 7], ids=["per-event", "per-byte", "every-7-bytes"])
def test_reasoning_text_and_calls_come_back_in_order_however_the_bytes_are_split(split: int) -> None:
    got = streamed([*reasoning(0, "think first"), *message(1, "Let me ", "check."),
                    *call(2, "get_weather", '{"city": "Oslo"}'), *call(3, "get_weather", '{"city": "Bergen"}'), *end()],
                   split=split)
    assert validate(got) == "response.completed"
    out = final(got)["output"]
    assert [o["type"] for o in out] == ["reasoning", "message", "function_call", "function_call"]
    assert out[0]["content"][0]["text"] == "think first" and out[1]["content"][0]["text"] == "Let me check."
    assert [(o["call_id"], json.loads(o["arguments"])) for o in out[2:]] == [("call_2", {"city": "Oslo"}),
                                                                           ("call_3", {"city": "Bergen"})]


def test_arguments_that_come_only_whole_at_the_end_are_read_once() -> None:
    got = streamed([*call(0, "get_weather", '{"city": "Oslo"}', deltas=False), *end()], guard(tools=True))
    assert validate(got) == "response.completed"
    out = final(got)["output"]
    assert len(out) == 1 and json.loads(out[0]["arguments"]) == {"city": "Oslo"}, out  # judged: canonical JSON
    got = streamed([*call(0, "get_weather", '{"city": "Oslo"}'), *end()])  # deltas and the done: not twice
    assert final(got)["output"][0]["arguments"] == '{"city": "Oslo"}'


def test_an_incomplete_response_ends_incomplete_at_max_output_tokens() -> None:
    got = streamed([*message(0, "so ", "far"), *end("response.incomplete", "max_output_tokens")])
    assert validate(got) == "response.incomplete"
    resp = final(got)
    assert resp["incomplete_details"] == {"reason": "max_output_tokens"} and resp["output"][0]["status"] == "incomplete"


@pytest.mark.parametrize(("event", "error", "code"), [
    (ev("response.failed", response={"status": "failed", "error": {"code": "server_error", "message": "boom"}}),
     UpstreamError, "upstream_stream_error"),
    (ev("response.failed", response={"status": "failed", "error": {"code": "rate_limit_exceeded", "message": "x"}}),
     RateLimited, "upstream_rate_limited"),
    (ev("error", code="server_error", message="secret upstream detail"), UpstreamError, "upstream_stream_error"),
    (b"this is not an event\n\n", UpstreamError, "upstream_bad_event"),
    (b"data: {not json}\n\n", UpstreamError, "upstream_bad_event"),
], ids=["failed", "failed-rate-limited", "error-event", "not-sse", "not-json"])
def test_a_failed_stream_is_the_gateways_error_and_never_the_upstreams_words(event, error, code) -> None:
    reader = responses.NativeEvents()
    assert reader.feed(b"".join(message(0, "partial"))) != []
    with pytest.raises(error) as raised:
        reader.feed(event)
    assert raised.value.code == code and "secret" not in raised.value.message and not reader.done


def test_a_stream_that_never_completes_has_no_done_and_an_event_past_the_bound_is_refused() -> None:
    reader = responses.NativeEvents()
    pieces = reader.feed(b"".join(message(0, "cut ", "here")))
    assert b"[DONE]" not in b"".join(pieces) and not reader.done  # the relay then ends it as a cut stream
    with pytest.raises(UpstreamError) as big:
        responses.NativeEvents().feed(b"data: " + b"x" * (4 * 1024 * 1024 + 1))
    assert big.value.code == "upstream_event_too_large"


def test_unknown_events_and_items_are_not_read() -> None:
    got = streamed([ev("response.created", response={"status": "in_progress"}),
                    ev("response.output_item.added", output_index=0, item={"type": "web_search_call", "id": "ws_0"}),
                    ev("response.web_search_call.completed", output_index=0, item_id="ws_0"),
                    ev("response.output_text.annotation.added", output_index=1, annotation={"type": "url_citation"}),
                    *message(1, "plain"), *end()])
    assert validate(got) == "response.completed" and [o["type"] for o in final(got)["output"]] == ["message"]


# Whole Responses -------------------------------------------------------------------------------------------


def whole(output: list[dict], status: str = "completed", g: OutputGuard | None = None, **extra: Any) -> dict:
    body = json.dumps({"id": "resp_up", "object": "response", "model": "m", "status": status, "output": output,
                       "usage": USAGE, **extra}).encode()
    chat = responses.native_chat_completion(body)
    if g is not None:
        chat = asyncio.run(g.reply(chat))
    return responses.encode_response(chat, id="resp_gw", request=REQ, created_at=1)


def test_a_whole_response_is_read_into_the_chat_form_and_encoded_back() -> None:
    out = whole([{"id": "rs_1", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
                 {"id": "m_1", "type": "message", "role": "assistant", "status": "completed",
                  "content": [{"type": "output_text", "text": "key AKIAIOSFODNN7EXAMPLE", "annotations": []}]},
                 {"id": "fc_1", "type": "function_call", "call_id": "call_9", "name": "get_weather", "arguments": "{}"}],
                g=guard(tools=True))
    assert out["status"] == "completed" and [o["type"] for o in out["output"]] == ["message", "function_call"]  # reasoning: minimised
    assert out["output"][0]["content"][0]["text"] == "key [REDACTED:aws_access_key]"
    assert out["output"][1]["call_id"] == "call_9" and out["id"] == "resp_gw"  # the gateway's id, the upstream's call id
    assert (out["usage"]["input_tokens"], out["usage"]["input_tokens_details"]["cached_tokens"],
            out["usage"]["output_tokens"], out["usage"]["output_tokens_details"]["reasoning_tokens"]) == (12, 4, 7, 2)
    thought = whole([{"type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]}])
    assert thought["output"][0]["content"][0]["text"] == "hmm"  # without a guard's minimising: read


def test_a_whole_incomplete_failed_or_foreign_reply_is_read_as_such() -> None:
    cut = whole([{"type": "message", "content": [{"type": "output_text", "text": "so"}]}], "incomplete",
                incomplete_details={"reason": "max_output_tokens"})
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    with pytest.raises(UpstreamError):
        whole([], "failed", error={"code": "server_error", "message": "upstream words"})
    with pytest.raises(RateLimited):
        whole([], "failed", error={"code": "rate_limit_exceeded", "message": "x"})
    for body in (b'{"choices": []}', b"not json", b'{"status": "in_progress", "output": []}'):
        with pytest.raises(GatewayError):
            responses.native_chat_completion(body)


# What is sent ----------------------------------------------------------------------------------------------


def test_the_chain_and_this_requests_items_go_with_store_false_and_no_previous_id() -> None:
    history = [{"id": "msg_a", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": "earlier"}]},
               {"id": "rs_a", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "hm"}]},
               {"id": "fc_a", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "status": "completed"}]
    src = responses.parse(json.dumps({"model": "alias", "previous_response_id": "resp_x", "metadata": {"k": "v"},
                                      "include": ["reasoning.encrypted_content"], "max_output_tokens": 900,
                                      "input": [{"type": "function_call_output", "call_id": "c1", "output": "ok"}]}).encode())
    tr = responses.to_chat(src, history)
    guarded = msgspec.structs.replace(tr.request)
    guarded.max_tokens = 256  # the limits' clamp
    out = responses.native_body(src, history, tr.request, guarded, model="up-model", stream=True)
    body = json.loads(out.body)
    assert not out.rewritten and out.dropped == ["include"]
    assert body["model"] == "up-model" and body["max_output_tokens"] == 256 and body["store"] is False
    assert body["stream"] is True and "previous_response_id" not in body and "metadata" not in body
    assert body["input"] == [*history, {"type": "function_call_output", "call_id": "c1", "output": "ok"}]


def test_a_request_the_guard_rewrote_goes_as_guarded_in_the_responses_wire() -> None:
    src = responses.parse(json.dumps({
        "model": "m", "instructions": "Be brief.", "max_output_tokens": 50, "temperature": 0.2,
        "tools": [{"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}},
                  {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "f"}, "text": {"format": {"type": "json_object"}},
        "reasoning": {"effort": "low"},
        "input": [{"role": "developer", "content": "English."},
                  {"role": "user", "content": [{"type": "input_text", "text": "key AKIAIOSFODNN7EXAMPLE"},
                                               {"type": "input_image", "image_url": "https://x/y.png", "detail": "low"}]},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
                  {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{\"a\": 1}"},
                  {"type": "function_call_output", "call_id": "c1", "output": "done"}]}).encode())
    tr = responses.to_chat(src)
    assert not rewritten(tr.request, tr.request)
    fewer = msgspec.structs.replace(tr.request, tools=tr.request.tools[:0] or msgspec.UNSET)
    assert not rewritten(tr.request, fewer)  # only a tool taken out
    masked = list(tr.request.messages)
    masked[2] = Message(role="user", content=[{"type": "text", "text": "key [REDACTED:aws_access_key]"},
                                              masked[2].content[1]])
    guarded = msgspec.structs.replace(tr.request, messages=masked)
    assert rewritten(tr.request, guarded)
    out = responses.native_body(src, [], tr.request, guarded, model="up", stream=False)
    body = json.loads(out.body)
    assert out.rewritten and "AKIAIOSFODNN7EXAMPLE" not in out.body.decode() and body["store"] is False
    # read back, it is the guarded chat request: nothing the guard did is undone, nothing chat carries lost
    again = responses.to_chat(responses.parse(out.body))
    assert [msgspec.to_builtins(m) for m in again.request.messages] == [msgspec.to_builtins(m) for m in masked]
    for name in ("tools", "tool_choice", "response_format", "reasoning_effort", "max_tokens", "temperature"):
        assert getattr(again.request, name) == getattr(guarded, name), name


def test_a_tool_whose_description_the_guard_masked_sends_the_guarded_request() -> None:
    src = responses.parse(json.dumps({"model": "m", "input": "hi", "tools": [
        {"type": "function", "name": "f", "description": "key AKIAIOSFODNN7EXAMPLE", "parameters": {"type": "object"}}]}).encode())
    tr = responses.to_chat(src)
    masked = [{**t, "function": {**t["function"], "description": "key [REDACTED:aws_access_key]"}} for t in tr.request.tools]
    guarded = msgspec.structs.replace(tr.request, tools=masked)
    assert rewritten(tr.request, guarded)
    out = responses.native_body(src, [], tr.request, guarded, model="up", stream=False)
    assert out.rewritten and b"AKIAIOSFODNN7EXAMPLE" not in out.body and b"[REDACTED:aws_access_key]" in out.body
