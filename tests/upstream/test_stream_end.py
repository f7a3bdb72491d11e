"""A stream is complete only when its end event arrives: an event whose data is exactly
[DONE]. A model that writes the text "data: [DONE]" and is then cut ends in an error the
SDK raises, never in a silent 200."""

from __future__ import annotations

import openai
import pytest

from sluice.upstream.relay import SSERelay
from support import Sim, start_gateway

FAKE_END = "data: [DONE]\n\ndata: [DONE]"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream-end")
    sim = Sim(tmp)  # its own sim: these tests inject faults
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "app", "owner": "a@example.com", "models": ["sim-small"]}])
    yield sim, g
    g.stop()
    sim.stop()


def _stream(g, **kw) -> tuple[str, list]:
    client = openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)
    text, chunks = "", []
    for chunk in client.chat.completions.create(model="sim-small", stream=True, max_tokens=8,
                                                messages=[{"role": "user", "content": "hi"}], **kw):
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text, chunks


def test_a_model_that_writes_the_end_marker_and_is_then_cut_makes_the_sdk_raise(stack):
    sim, g = stack
    sim.faults(say_first=FAKE_END, disconnect_after_chunks=1)
    try:
        with pytest.raises(openai.APIError, match="ended before it was complete"):
            _stream(g)
    finally:
        sim.clear_faults()


def test_a_model_that_writes_the_end_marker_and_finishes_streams_it_whole(stack):
    sim, g = stack
    sim.faults(say_first=FAKE_END)
    try:
        text, chunks = _stream(g)
    finally:
        sim.clear_faults()
    assert text.startswith(FAKE_END)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize("end", [b"data: [DONE]\n\n", b"data:[DONE]\n\n"])
def test_the_relay_sees_the_end_event_whether_it_comes_alone_or_after_other_events(end):
    content = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    alone = SSERelay(strip_usage=False)
    alone.feed(content)
    alone.feed(end)
    together = SSERelay(strip_usage=False)
    together.feed(content + end)
    assert alone.done and together.done


@pytest.mark.parametrize("fake", [b'data: {"choices":[{"delta":{"content":"data: [DONE]"}}]}\n\n',
                                  b'data: {"x":"\\n\\ndata: [DONE]\\n\\n"}\n\n',
                                  b'data: not [DONE]\n\n', b'data: [DONE] \n\n'])
def test_the_relay_does_not_take_text_that_merely_contains_the_marker_for_the_end(fake):
    relay = SSERelay(strip_usage=False)
    relay.feed(fake)
    assert not relay.done
