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


def _reference(stream: bytes, strip: bool) -> tuple[int, bool, int | None, list[bool]]:
    """What the relay must report, computed the slow obvious way: event by event."""
    events = stream.split(b"\n\n")[:-1]
    done = any(e in (b"data: [DONE]", b"data:[DONE]") for e in events)
    usage = None
    kept = 0
    for e in events:
        body = json.loads(e[5:]) if e.startswith(b"data:") and e[5:].strip().startswith(b"{") else {}
        if isinstance(body.get("usage"), dict):
            usage = body["usage"]["prompt_tokens"]
            if strip and body.get("choices") == []:
                continue
        kept += 1
    return kept - done, done, usage, [e.startswith((b"data:", b":", b"event:", b"id:", b"retry:")) for e in events]


def test_event_counts_usage_and_shape_agree_with_a_slow_reference_on_random_streams():
    import random

    from sluice.pipeline.forward import _good_prefix, _malformed

    usage = event({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
    pieces = [ROLE, *TOKENS, USAGE, usage, DONE, b": keepalive\n\n", b"event: x\ndata: y\n\n", b"garbage\n\n",
              b"data: a\ndata: b\n\n", event({"choices": [{"delta": {"content": "x"}}], "usage": None}), b"data:[DONE]\n\n"]
    rng = random.Random(15)
    for _ in range(3000):
        stream = b"".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
        strip = rng.random() < 0.5
        kept, done, prompt, shapes = _reference(stream, strip)
        relay = SSERelay(strip_usage=strip)
        at = rng.randrange(len(stream))
        out, stopped = b"", False
        for part in (stream[:at], stream[at:]):
            block = relay.feed(part)
            good = block if relay.clean or not _malformed(block) else _good_prefix(block)
            if relay.clean:  # a block called clean must really be data events only
                assert all(e.startswith(b"data:") and b"\n" not in e for e in block.split(b"\n\n")[:-1]), block
            out += good
            if good is not block:
                stopped = True
                break
        else:
            assert relay.events == kept and relay.done == done, stream
            assert (relay.usage.prompt_tokens if relay.usage else None) == prompt, stream
        # A field-less event stops the relay; events of two lines may hide one from the cheap count.
        assert stopped == (not all(shapes)) or (not stopped and b"\ndata: " in stream.replace(b"\n\ndata: ", b"")), stream


def test_the_model_member_is_the_key_never_a_value_or_text_and_is_renamed_in_every_event():
    from sluice.upstream.relay import model_member, renamed

    body = b'{"object":"model","content":"say \\"model\\": \\"x\\"","model" : "up\\\\"}'
    at, start, end = model_member(body)
    assert body[at:end] == b'"model" : "up\\\\"'  # the value ends at the quote after an escaped backslash
    assert json.loads(renamed(body, b'"mine"'))["model"] == "mine" and json.loads(renamed(body, b'"mine"'))["object"] == "model"
    quoted = b'{"model":"a\\"b","x":1}'
    assert quoted[slice(*model_member(quoted)[1:])] == b'"a\\"b"'  # an escaped quote does not end it
    assert model_member(b'{"model": null}') is None and renamed(b'{"a":1}', b'"m"') == b'{"a":1}'
    same = b'{"model":"m","x":1}'
    assert renamed(same, b'"m"') is same  # the names agree: no copy
    # the names agree only when the whole string does: a longer upstream name that starts with the caller's is renamed
    assert renamed(b'{"model":"m-2","x":1}', b'"m"') == b'{"model":"m","x":1}'
    assert renamed(b'{"model":"m\\"}', b'"m\\"') == b'{"model":"m\\"}'
    assert renamed(b'{"object":"model","model":"m-2"}', b'"m"') == b'{"object":"model","model":"m"}'
    assert renamed(b'{"model" : "m-2"}', b'"m"') == b'{"model" : "m"}'
    chunks = [event({"id": "c", "model": "upstream-name", "choices": [{"index": 0, "delta": {"content": f"model{i}"}}]})
              for i in range(4)]
    usage = event({"id": "c", "model": "upstream-name", "choices": [],
                   "usage": {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}})
    stream = b": keepalive\n\n" + b"".join(chunks) + usage + DONE
    relay = SSERelay(strip_usage=True, rename=b'"asked-for"')
    out = b"".join(relay.feed(stream[i:i + 5]) for i in range(0, len(stream), 5))
    events = [json.loads(e[6:]) for e in out.split(b"\n\n") if e.startswith(b"data: {")]
    assert len(events) == 4 and {e["model"] for e in events} == {"asked-for"}
    assert [e["choices"][0]["delta"]["content"] for e in events] == [f"model{i}" for i in range(4)]
    assert relay.usage.completion_tokens == 4 and relay.done
