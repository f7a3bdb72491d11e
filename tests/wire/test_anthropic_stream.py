"""Chat streams re-encode in Anthropic's stream grammar: the validator accepts every encoded
stream, the SDK reads every event, and a stream assembles to what the whole reply encodes to."""

from __future__ import annotations

import json
from pathlib import Path

import anthropic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from chat_streams import draw_calls, stream, text_piece, whole
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from messages_grammar import GrammarError, parse_sse, validate
from pydantic import TypeAdapter

from sluice.core import bytescan
from sluice.core.errors import RateLimited
from sluice.wire.anthropic import StreamEncoder, encode_message, ping, text_run

GOLDEN = Path(__file__).parent / "golden" / "streams"
EVENT = TypeAdapter(anthropic.types.RawMessageStreamEvent)
USAGE = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39, "prompt_tokens_details": {"cached_tokens": 16}}


def encode_stream(raw: bytes, cuts: list[int] | None = None, model: str = "sim-small", input_tokens: int = 0) -> bytes:
    """Feed the chat stream split at ``cuts`` (byte offsets), then close."""
    enc = StreamEncoder(model, input_tokens=input_tokens)
    bounds = [0, *sorted(set(cuts or [])), len(raw)]
    out = [enc.feed(raw[a:b]) for a, b in zip(bounds, bounds[1:])]
    out.append(enc.close())
    return b"".join(out)


def sdk_assemble(events: list[tuple[str, dict]]) -> anthropic.types.Message:
    """The message the SDK's own stream accumulator builds from the events (each validated as the SDK types it)."""
    snapshot = None
    bufs: dict[int, bytes] = {}
    for _, data in events:
        if data["type"] in ("ping", "error"):
            continue
        snapshot = accumulate_event(event=EVENT.validate_python(data), current_snapshot=snapshot, json_bufs=bufs)
    assert snapshot is not None
    return anthropic.types.Message.model_validate(snapshot.model_dump())


def _comparable(m: anthropic.types.Message) -> dict:
    return m.model_dump(include={"id", "model", "content", "stop_reason", "stop_sequence", "usage"})


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.json")), ids=lambda p: p.stem)
def test_stream_goldens_encode_event_for_event(path: Path) -> None:
    case = json.loads(path.read_text())
    raw = b"".join(b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n" for c in case["chat"])
    model = case["anthropic"][0][1]["message"]["model"]
    events = parse_sse(encode_stream(raw, model=model, input_tokens=case["input_tokens"]))
    assert [list(e) for e in events] == case["anthropic"]
    assert validate(events) == "message_stop"


@st.composite
def chat_replies(draw: st.DrawFn) -> tuple[list[str], list, str, dict | None, str | None]:
    texts = draw(st.lists(text_piece, max_size=6))
    calls = draw_calls(draw, ["Bash", "Read", "get_weather"])
    finish = "tool_calls" if calls else draw(st.sampled_from(["stop", "length"]))
    vllm_stop = draw(st.sampled_from([None, "END"])) if finish == "stop" else None
    prompt = draw(st.integers(0, 5000))
    use = {"prompt_tokens": prompt, "completion_tokens": draw(st.integers(0, 4000)), "total_tokens": 0,
           "prompt_tokens_details": {"cached_tokens": draw(st.integers(0, prompt))}}
    return texts, calls, finish, use, vllm_stop


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reply=chat_replies(), data=st.data())
def test_a_whole_reply_equals_its_streams_assembly(reply: tuple, data: st.DataObject) -> None:
    texts, calls, finish, use, vllm_stop = reply
    raw = stream(texts, calls, finish, use, vllm_stop)
    cuts = data.draw(st.lists(st.integers(0, len(raw)), max_size=8))  # bytes split anywhere, mid-character too
    events = parse_sse(encode_stream(raw, cuts))
    assert validate(events) == "message_stop"
    expected = anthropic.types.Message.model_validate(
        encode_message(json.dumps(whole(texts, calls, finish, use, vllm_stop)).encode()))
    assert _comparable(sdk_assemble(events)) == _comparable(expected)
    # input_json_delta carries the whole arguments: their concatenation is each call's arguments.
    for call, block in zip(calls, [b for b in expected.content if b.type == "tool_use"]):
        assert block.input == (json.loads("".join(call[2])) if call[2] else {})


def test_a_cut_stream_ends_with_an_error_event_the_grammar_accepts() -> None:
    raw = stream(["Hello", " world"], [("call_1", "f", ['{"a":', " 1}"])], "tool_calls", USAGE)
    for at in (0, raw.index(b"world"), raw.index(b"[DONE]") - 200, raw.index(b"[DONE]")):
        enc = StreamEncoder("m")
        out = enc.feed(raw[:at]) + enc.close()
        events = parse_sse(out)
        assert validate(events) == "error", at
        assert events[-1][1]["error"]["type"] == "api_error" and enc.ended
        assert enc.feed(b"data: [DONE]\n\n") == b"" and enc.close() == b""  # nothing after the end


def test_a_chat_error_event_becomes_an_anthropic_error_event() -> None:
    enc = StreamEncoder("m")
    head = stream(["Hi"], [], "stop", None).split(b"\n\n")[0] + b"\n\n"
    out = enc.feed(head + b'data: {"error": {"message": "overloaded", "type": "server_error", "code": 503}}\n\n')
    events = parse_sse(out)
    assert validate(events) == "error"
    assert events[-1][1] == {"type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}}


def test_a_malformed_event_or_bad_tool_arguments_end_the_stream_with_an_error() -> None:
    for raw in (stream(["Hi"], [], "stop", USAGE).replace(b'"Hi"', b'"Hi'),
                stream([], [("c", "f", ['{"a": ', "tru"])], "tool_calls", USAGE),
                stream([], [("c", "f", ["[1]"])], "tool_calls", USAGE)):
        events = parse_sse(encode_stream(raw))
        assert validate(events) == "error"
        assert not any(e[0] == "content_block_stop" and e[1]["index"] == 0
                       for e in events if b"tool_calls" in raw and b'"c"' in raw)  # no tool block closes on bad arguments


def test_interleaved_parallel_tool_arguments_are_refused_not_merged() -> None:
    head = b'data: {"id": "c", "choices": [{"index": 0, "delta": {"tool_calls": [%s]}}]}\n\n'
    raw = b"".join(head % p for p in (b'{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}',
                                      b'{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}',
                                      b'{"index": 0, "function": {"arguments": "}"}}'))
    events = parse_sse(encode_stream(raw))
    assert validate(events) == "error"


def test_ping_may_come_while_the_first_token_is_pending_and_the_gateway_can_fail_the_stream() -> None:
    enc = StreamEncoder("m", input_tokens=12)
    out = enc.start() + ping() + ping()
    out += enc.feed(stream(["Hi"], [], "stop", None)[:60])
    out += enc.fail(RateLimited("budget spent"))
    events = parse_sse(out)
    assert validate(events) == "error"
    assert events[0][1]["message"]["usage"]["input_tokens"] == 12
    assert events[-1][1]["error"] == {"type": "rate_limit_error", "message": "budget spent"}


@pytest.mark.parametrize(("name", "events"), [
    ("ping before message_start", [("ping", {"type": "ping"})]),
    ("no message_stop", [("message_start", {"type": "message_start", "message": {
        "content": [], "stop_reason": None, "usage": {"input_tokens": 1}}})]),
    ("index gap", [("message_start", {"type": "message_start", "message": {
        "content": [], "stop_reason": None, "usage": {"input_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}})]),
    ("delta outside its block", [("message_start", {"type": "message_start", "message": {
        "content": [], "stop_reason": None, "usage": {"input_tokens": 1}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})]),
    ("text delta in a tool block", [("message_start", {"type": "message_start", "message": {
        "content": [], "stop_reason": None, "usage": {"input_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "input": {}}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})]),
])
def test_the_grammar_validator_refuses_what_the_grammar_forbids(name: str, events: list) -> None:
    with pytest.raises(GrammarError):
        validate(events)


def _events_per_event(raw: bytes) -> list:
    """The encoder's output event by event, its text-run fast path off: the reference the fast path must equal."""
    enc = StreamEncoder("sim-small", message_id="msg_x", text_runs=False)
    parts = [ev + b"\n\n" for ev in raw.split(b"\n\n") if ev]
    return parse_sse(enc.start() + b"".join(enc.feed(p) for p in parts) + enc.close())


TEXT = st.text(st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEXT, min_size=1, max_size=40), st.data())
def test_text_runs_fed_in_blocks_encode_exactly_as_event_by_event(texts: list[str], data: st.DataObject) -> None:
    """The block fast path (text_run.py) for runs of text chunks, quotes, backslashes, newlines and
    empty texts included, gives the events the event-by-event encoder gives, wherever the blocks are cut
    at event boundaries (as the relay yields them)."""
    raw = stream(texts, [], "stop", USAGE)
    events = [ev + b"\n\n" for ev in raw.split(b"\n\n") if ev]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(events) - 1), max_size=6)))) if len(events) > 1 else []
    bounds = [0, *cuts, len(events)]
    want = _events_per_event(raw)
    for reframe in {bytescan.reframe, bytescan.py_reframe}:  # compiled (where built) and its pure-Python twin
        text_run.reframe = reframe
        try:
            enc = StreamEncoder("sim-small", message_id="msg_x")
            got = parse_sse(enc.start() + b"".join(enc.feed(b"".join(events[a:b])) for a, b in zip(bounds, bounds[1:]))
                            + enc.close())
        finally:
            text_run.reframe = bytescan.reframe
        assert got == want
        validate(got)


def test_a_long_text_run_in_one_block_takes_the_fast_path() -> None:
    """The yardstick's shape (64 text chunks in one block) goes through text_run, not event by event."""
    from sluice.wire.anthropic import stream as stream_mod

    raw = stream([f" tok{i}" for i in range(64)], [], "length", USAGE)
    events = [ev + b"\n\n" for ev in raw.split(b"\n\n") if ev]
    enc = StreamEncoder("sim-small", message_id="msg_x")
    head = enc.start() + enc.feed(b"".join(events[:2]))
    calls = []
    real = stream_mod.completion_decoder
    try:
        stream_mod.completion_decoder = type("Spy", (), {"decode": lambda self, b: calls.append(1) or real.decode(b)})()
        body = enc.feed(b"".join(events[2:65]))  # tok1 ... tok63 (0: the role, 1: tok0, which teaches P and S)
    finally:
        stream_mod.completion_decoder = real
    assert calls == [] and body.count(b"text_delta") == 63
    assert parse_sse(head + body + enc.feed(b"".join(events[65:])) + enc.close()) == _events_per_event(raw)


@pytest.mark.parametrize("odd", [
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x","role":"assistant"},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a","tool_calls":[]},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":null},"finish_reason":null}]}\n\n',
    b'data: {"id":"c","object":"chat.completion.chunk","created":2,"model":"m","choices":[{"index":0,"delta":{"content":"late"},"finish_reason":null}]}\n\n',
    # a chunk of another shape whose quotes make up for the extra ones of the next: only the rebuild tells
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"x","role":"assistant"},"finish_reason":null}]}\n\n',
    # two chunks whose quotes balance between them (four and none): each must be one JSON string on its own
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"a","x":"b"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":7},"finish_reason":null}]}\n\n',
    # one ending in an escaped quote (one quote of its own) beside one with three
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"ab\\"},"finish_reason":null}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"c"d"},"finish_reason":null}]}\n\n',
], ids=["another-field-after", "a-value-that-is-not-one-string", "null", "another-prefix", "quotes-that-balance",
        "quotes-that-balance-across-two", "an-escaped-closing-quote"])
def test_an_odd_chunk_inside_a_text_run_is_encoded_as_event_by_event(odd: bytes) -> None:
    """A chunk that is not P + one JSON string + S, between learned text chunks, sends the block the slow way."""
    def text(t: str) -> bytes:
        return (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
                b'"delta":{"content":' + json.dumps(t).encode() + b'},"finish_reason":null}]}\n\n')
    end = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
           b'"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    raw = text("one") + text("two") + odd + text("three") + end
    enc = StreamEncoder("sim-small", message_id="msg_x")
    blocks = [text("one"), text("two") + odd + text("three"), end]
    got = parse_sse(enc.start() + b"".join(enc.feed(b) for b in blocks) + enc.close())
    assert got == _events_per_event(raw)
