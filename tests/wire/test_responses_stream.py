"""Chat streams re-encode in the Responses stream grammar: the validator accepts every encoded
stream, the SDK types every event and its stream state assembles them, and a stream assembles to
what the whole reply encodes to; failures end the stream with one ``response.failed``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from chat_streams import draw_calls, stream, text_piece, whole
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter
from responses_grammar import GrammarError, parse_sse, validate

from sluice.core.errors import RateLimited
from sluice.wire.responses import StreamEncoder, encode_response, parse

GOLDEN = Path(__file__).parent / "golden" / "responses_streams"
EVENT = TypeAdapter(ResponseStreamEvent)
USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 16}}
REQUEST = parse(b'{"model": "sim-small", "input": "hi", "stream": true}')


def encoder(input_tokens: int = 0, request: Any = REQUEST, id: str = "resp_abc") -> StreamEncoder:
    return StreamEncoder(id=id, request=request, created_at=1700000000, input_tokens=input_tokens)


def encode_stream(raw: bytes, cuts: list[int] | None = None, enc: StreamEncoder | None = None) -> bytes:
    """Start, feed the chat stream split at ``cuts`` (byte offsets), then close."""
    enc = enc or encoder()
    bounds = [0, *sorted(set(cuts or [])), len(raw)]
    return enc.start() + b"".join(enc.feed(raw[a:b]) for a, b in zip(bounds, bounds[1:])) + enc.close()


def with_reasoning(raw: bytes, pieces: list[str]) -> bytes:
    """The chat stream with reasoning deltas (vLLM's ``reasoning_content``) after its role chunk."""
    first, _, rest = raw.partition(b"\n\n")
    head = json.loads(first[len(b"data: "):])
    chunks = []
    for p in pieces:
        head["choices"] = [{"index": 0, "delta": {"reasoning_content": p}, "finish_reason": None}]
        chunks.append(b"data: " + json.dumps(head).encode() + b"\n\n")
    return first + b"\n\n" + b"".join(chunks) + rest


def sdk_assemble(events: list[tuple[str, dict]]) -> Response:
    """The Response the SDK's own stream state builds from the events, each typed as the SDK types it."""
    state: ResponseStreamState = ResponseStreamState(text_format=omit, input_tools=omit)
    last = None
    for _, data in events:
        fired = state.handle_event(EVENT.validate_python(data))
        last = fired[-1] if fired else last
    assert last is not None
    final = state._completed_response if last.type == "response.completed" else last.response  # type: ignore[union-attr]
    return Response.model_validate(final.model_dump())  # type: ignore[union-attr]


def _comparable(r: Response) -> Any:
    """The Response as data, without what the SDK adds of its own when it parses a stream (``parsed``, ``parsed_arguments``)."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in ("parsed", "parsed_arguments")}
        return [strip(x) for x in v] if isinstance(v, list) else v
    return strip(r.model_dump())


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_stream_goldens_encode_event_for_event(path: Path) -> None:
    case = json.loads(path.read_text())
    raw = b"".join(b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n" for c in case["chat"])
    request = parse(json.dumps(case["request"]).encode())
    opening = case["responses"][0][1]["response"]
    events = parse_sse(encode_stream(raw, enc=encoder(case["input_tokens"], request, opening["id"])))
    assert [list(e) for e in events] == case["responses"]
    assert validate(events) == "response.completed"


@st.composite
def chat_replies(draw: st.DrawFn) -> tuple[list[str], list[str], list, str, dict | None]:
    thoughts = draw(st.lists(text_piece, max_size=3))
    texts = draw(st.lists(text_piece, max_size=6))
    calls = draw_calls(draw, ["shell", "apply_patch", "get_weather"])
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length", "content_filter"]))
    prompt = draw(st.integers(0, 5000))
    use = {"prompt_tokens": prompt, "completion_tokens": draw(st.integers(0, 4000)), "total_tokens": 0,
           "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, prompt))},
           "completion_tokens_details": {"reasoning_tokens": draw(st.integers(0, 100))}}
    return thoughts, texts, calls, finish, draw(st.sampled_from([use, None]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=chat_replies(), data=st.data())
def test_a_whole_reply_equals_its_streams_assembly(reply: tuple, data: st.DataObject) -> None:
    thoughts, texts, calls, finish, use = reply
    raw = with_reasoning(stream(texts, calls, finish, use), thoughts)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))  # bytes split anywhere, mid-character too
    enc = encoder()
    events = parse_sse(encode_stream(raw, cuts, enc))
    assert validate(events) == ("response.incomplete" if finish in ("length", "content_filter") else "response.completed")
    reply_json = whole(texts, calls, finish, use)
    if thoughts:
        reply_json["choices"][0]["message"]["reasoning_content"] = "".join(thoughts)
    expected = encode_response(json.dumps(reply_json).encode(), id="resp_abc", request=REQUEST, created_at=1700000000)
    assert enc.response() == expected == events[-1][1]["response"]
    assert enc.output_items() == expected["output"]
    assert _comparable(sdk_assemble(events)) == _comparable(Response.model_validate(expected))
    # the argument deltas carry the whole arguments: their concatenation is each call's arguments
    for call, item in zip(calls, [i for i in expected["output"] if i["type"] == "function_call"]):
        assert json.loads(item["arguments"]) == (json.loads("".join(call[2])) if call[2] else {})


def test_the_opening_events_come_before_the_first_token_and_usage_falls_back_to_the_estimate() -> None:
    enc = encoder(input_tokens=12)
    opening = parse_sse(enc.start())
    assert [e[0] for e in opening] == ["response.created", "response.in_progress"]
    assert enc.start() == b""  # once
    assert enc.response()["status"] == "in_progress" and enc.response()["usage"] is None
    events = opening + parse_sse(enc.feed(stream(["Hi"], [], "stop", None)) + enc.close())
    assert validate(events) == "response.completed"
    assert events[-1][1]["response"]["usage"]["input_tokens"] == 12  # the upstream sent none


def test_a_cut_stream_ends_with_response_failed_the_grammar_accepts() -> None:
    raw = stream(["Hello", " world"], [("call_1", "f", ['{"a":', " 1}"])], "tool_calls", USAGE)
    for at in (0, raw.index(b"world"), raw.index(b"[DONE]") - 200, raw.index(b"[DONE]")):
        enc = encoder()
        events = parse_sse(enc.feed(raw[:at]) + enc.close())
        assert validate(events) == "response.failed", at
        failed = events[-1][1]["response"]
        assert failed["error"]["code"] == "server_error" and failed["error"]["message"].startswith("The upstream")
        assert enc.ended and enc.response() == failed
        Response.model_validate(failed)
        assert enc.feed(b"data: [DONE]\n\n") == b"" and enc.close() == b"" and enc.fail(RateLimited("x")) == b""


@pytest.mark.parametrize(("error", "code"), [
    (b'{"error": {"message": "overloaded", "type": "server_error", "code": 503}}', "server_error"),
    (b'{"error": {"message": "budget spent", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}}',
     "rate_limit_exceeded"),  # sluice's own error event
    (b'{"error": {"message": "blocked by policy", "type": "invalid_request_error", "param": null, "code": "guard"}}',
     "invalid_prompt"),
])
def test_a_chat_error_event_becomes_response_failed(error: bytes, code: str) -> None:
    enc = encoder()
    head = b"\n\n".join(stream(["Hi", " there"], [], "stop", None).split(b"\n\n")[:2]) + b"\n\n"
    events = parse_sse(enc.start() + enc.feed(head + b"data: " + error + b"\n\n"))
    assert validate(events) == "response.failed"
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == code
    assert failed["error"]["message"] == json.loads(error)["error"]["message"]
    # the message open at the failure is listed as it stood, incomplete
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "Hi"


def test_a_malformed_event_bad_arguments_or_interleaved_calls_end_the_stream_failed() -> None:
    head = b'data: {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [%s]}}]}\n\n'
    interleaved = b"".join(head % p for p in (b'{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}',
                                              b'{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}',
                                              b'{"index": 0, "function": {"arguments": "}"}}'))
    # each piece whole JSON on its own: only the interleaving is wrong
    resumed = b"".join(head % p for p in (b'{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}}',
                                          b'{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}',
                                          b'{"index": 0, "function": {"arguments": "{}"}}')) + \
        b'data: {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}\n\ndata: [DONE]\n\n'
    for raw in (stream(["Hi"], [], "stop", USAGE).replace(b'"Hi"', b'"Hi'),
                stream([], [("c", "f", ['{"a": ', "tru"])], "tool_calls", USAGE),
                stream([], [("c", "f", ["[1]"])], "tool_calls", USAGE), interleaved, resumed):
        events = parse_sse(encode_stream(raw))
        assert validate(events) == "response.failed"
        if raw is not resumed:  # no call completes on bad arguments
            assert not any(e[0] == "response.function_call_arguments.done" for e in events)


def test_a_call_without_arguments_streams_an_empty_object_as_its_one_delta() -> None:
    raw = stream([], [("c", "now", [])], "tool_calls", USAGE)
    enc = encoder()
    events = parse_sse(encode_stream(raw, enc=enc))
    assert validate(events) == "response.completed"
    assert [e[1]["delta"] for e in events if e[0] == "response.function_call_arguments.delta"] == ["{}"]
    assert enc.response() == encode_response(json.dumps(whole([], [("c", "now", [])], "tool_calls", USAGE)).encode(),
                                             id="resp_abc", request=REQUEST, created_at=1700000000)


def test_a_call_cut_by_the_token_limit_is_an_incomplete_item_of_an_incomplete_response() -> None:
    events = parse_sse(encode_stream(stream([], [("c", "f", ['{"a": ', '"tr'])], "length", USAGE)))
    assert validate(events) == "response.incomplete"
    final = events[-1][1]["response"]
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][0]["status"] == "incomplete" and final["output"][0]["arguments"] == '{"a": "tr'
    assert sdk_assemble(events).status == "incomplete"


def test_the_gateway_can_fail_the_stream_while_the_first_token_is_pending_or_mid_text() -> None:
    enc = encoder()
    out = enc.start() + enc.feed(stream(["Hi"], [], "stop", None)[:200]) + enc.fail(RateLimited("budget spent"))
    events = parse_sse(out)
    assert validate(events) == "response.failed"
    assert events[-1][1]["response"]["error"] == {"code": "rate_limit_exceeded", "message": "budget spent"}
    never_started = encoder()
    events = parse_sse(never_started.fail(RateLimited("budget spent")))  # created, in_progress, failed
    assert [e[0] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert validate(events) == "response.failed"


def _good() -> list[tuple[str, dict]]:
    raw = with_reasoning(stream(["Hel", "lo"], [("call_1", "f", ['{"a":', " 1}"])], "tool_calls", USAGE), ["hm"])
    return parse_sse(encode_stream(raw))


def _mutate(events: list[tuple[str, dict]], n: int, path: list[Any], value: Any) -> list[tuple[str, dict]]:
    out = json.loads(json.dumps(events))
    target = out[n]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return [tuple(e) for e in out]  # type: ignore[misc]


def _find(events: list[tuple[str, dict]], name: str, k: int = 0) -> int:
    return [i for i, e in enumerate(events) if e[0] == name][k]


def _renumbered(events: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    out = json.loads(json.dumps(events))
    for n, (_, data) in enumerate(out):
        data["sequence_number"] = n
    return [tuple(e) for e in out]  # type: ignore[misc]


BREAKS = {
    "no response.created": lambda ev: _renumbered(ev[1:]),
    "no response.in_progress": lambda ev: _renumbered(ev[:1] + ev[2:]),
    "no closing event": lambda ev: ev[:-1],
    "two closing events": lambda ev: _renumbered(ev + ev[-1:]),
    "sequence gap": lambda ev: _mutate(ev, 5, [1, "sequence_number"], 99),
    "another response id": lambda ev: _mutate(ev, len(ev) - 1, [1, "response", "id"], "resp_other"),
    "output_index gap": lambda ev: _mutate(ev, _find(ev, "response.output_item.added", 1), [1, "output_index"], 5),
    "delta names another item": lambda ev: _mutate(ev, _find(ev, "response.output_text.delta"), [1, "item_id"], "msg_x"),
    "done text is not the deltas": lambda ev: _mutate(ev, _find(ev, "response.output_text.done"), [1, "text"], "Hel"),
    "part done text differs": lambda ev: _mutate(ev, _find(ev, "response.content_part.done", 1), [1, "part", "text"], "x"),
    "reasoning delta in a message": lambda ev: _mutate(ev, _find(ev, "response.output_text.delta"), [0], "response.reasoning_text.delta"),
    "done arguments are not the deltas": lambda ev: _mutate(
        ev, _find(ev, "response.function_call_arguments.done"), [1, "arguments"], '{"a": 2}'),
    "item done arguments differ": lambda ev: _mutate(ev, _find(ev, "response.output_item.done", 2), [1, "item", "arguments"], "{}"),
    "content index skips": lambda ev: _mutate(ev, _find(ev, "response.content_part.added"), [1, "content_index"], 1),
    "completed output differs": lambda ev: _mutate(ev, len(ev) - 1, [1, "response", "output"], []),
    "completed without usage": lambda ev: _mutate(ev, len(ev) - 1, [1, "response", "usage"], None),
    "item done before its text": lambda ev: _renumbered(
        [e for i, e in enumerate(ev) if i != _find(ev, "response.content_part.done", 1)]),
}


@pytest.mark.parametrize("name", BREAKS, ids=list(BREAKS))
def test_the_grammar_validator_refuses_what_the_grammar_forbids(name: str) -> None:
    good = _good()
    assert validate(good) == "response.completed"
    with pytest.raises(GrammarError):
        validate(BREAKS[name](good))


def test_the_grammar_validator_refuses_non_json_arguments_on_a_completed_call() -> None:
    good = _good()
    bad = good
    for name, key in (("response.function_call_arguments.delta", "delta"),):
        bad = _mutate(bad, _find(bad, name), [1, key], "{'a':")
    bad = _mutate(bad, _find(bad, "response.function_call_arguments.done"), [1, "arguments"], "{'a': 1}")
    n = _find(bad, "response.output_item.done", 2)
    bad = _mutate(bad, n, [1, "item", "arguments"], "{'a': 1}")
    with pytest.raises(GrammarError, match="JSON object"):
        validate(bad)


def test_a_held_end_waits_for_release_and_may_become_a_failure() -> None:
    """``hold_end``: the gateway stores a response before ``response.completed`` tells the caller it may
    chain on it; if the store cannot take it, the stream fails instead of completing."""
    raw = stream(["Hello", " there"], [], "stop", USAGE)
    plain = parse_sse(encode_stream(raw))
    held = StreamEncoder(id="resp_abc", request=REQUEST, created_at=1700000000, hold_end=True)
    body = encode_stream(raw, enc=held)
    assert held.held and b"response.completed" not in body and held.response()["status"] == "completed"
    assert parse_sse(body + held.release()) == plain and not held.held and held.release() == b""
    again = StreamEncoder(id="resp_abc", request=REQUEST, created_at=1700000000, hold_end=True)
    events = parse_sse(encode_stream(raw, enc=again) + again.fail(RateLimited("later", retry_after=1.0)))
    assert validate(events) == "response.failed" and not again.held and again.release() == b""
    assert events[-1][1]["response"]["output"] == plain[-1][1]["response"]["output"]
