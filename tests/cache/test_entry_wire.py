"""The stored form of an entry (``sluice.cache.wire``) serves the same bytes as the reference encoders
(``sluice.cache.entry.whole`` and ``events``) but for the id and time, whole and streamed, for text, tool
calls, several choices, no content and text that JSON must escape; and it survives its msgpack round trip."""

from __future__ import annotations

import json
import re

import pytest

from sluice.cache import wire
from sluice.cache.entry import Answer, Call, Entry, events, whole

ENTRIES = [
    Entry([Answer(0, "Hello there.", [], "stop")], 12, 3),
    Entry([Answer(0, None, [Call("call_1", "get_weather", '{"city":"Oslo"}')], "tool_calls")], 40, 9),
    Entry([Answer(0, "Let me look.", [Call("c1", "a", "{}"), Call("c2", "b", '{"x":1}')], "tool_calls"),
           Answer(1, 'Quotes " and \\ and \n and é ✓ \u2028', [], "length")], 7, 30),
    Entry([Answer(0, "", [], "stop")], 1, 0),
]
_ID = re.compile(rb'"id":"chatcmpl-[0-9a-f]+"')
_CREATED = re.compile(rb'"created":\d+')


def norm(b: bytes) -> bytes:
    return _CREATED.sub(b'"created":0', _ID.sub(b'"id":"X"', b))


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_stored_form_serves_the_reference_bytes_but_for_id_and_time(entry):
    p = wire.decoder.decode(wire.encode(wire.prepare(entry)))
    model = json.dumps("my-model").encode()
    assert norm(wire.whole(p, model)) == norm(whole(entry, "my-model"))
    for usage in (False, True):
        assert norm(wire.events(p, model, usage)) == norm(events(entry, "my-model", usage))
    assert (p.prompt_tokens, p.completion_tokens) == (entry.prompt_tokens, entry.completion_tokens)


def test_every_answer_has_its_own_id_and_one_id_per_stream():
    p = wire.prepare(ENTRIES[2])
    ids = {json.loads(wire.whole(p, b'"m"'))["id"] for _ in range(1000)}
    assert len(ids) == 1000
    stream = wire.events(p, b'"m"', True).split(b"\n\n")
    got = {json.loads(e[6:])["id"] for e in stream if e.startswith(b"data: {")}
    assert len(got) == 1 and got.isdisjoint(ids)
