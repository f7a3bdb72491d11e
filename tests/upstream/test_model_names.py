"""Names as the caller and the operator use them: a reply's ``model`` is the name the caller asked
for (the version that served it is in ``x-sluice-route``), whole and in every streamed chunk; the
request log names the target as the header does; an upstream that does not serve the configured
model is logged with its URL and the model asked of it."""

from __future__ import annotations

import json
import time

import openai
import pytest

from support import Sim, start_gateway


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("names")
    s = Sim(tmp)  # a sim of its own: the 404 test sets a fault on it
    g = start_gateway(
        tmp,
        upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"},
                {"name": "house-chat", "upstream": "sim", "upstream_model": "sim-small"},
                {"name": "house-embed", "upstream": "sim", "upstream_model": "sim-embed"},
                {"name": "misnamed", "upstream": "sim", "upstream_model": "llama-typo"}],
        identities=[{"name": "app", "owner": "o", "models": ["*"]}])
    yield g, s
    g.stop()
    s.stop()


def _client(g) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)


def _log_line(g, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in g.log().splitlines():
            if '"sluice.request"' in line and request_id in line:
                return json.loads(line)
        time.sleep(0.1)
    raise AssertionError(f"no request log line for {request_id}")


def test_a_reply_names_the_model_as_the_caller_did_and_the_route_header_the_version(rig):
    g, _ = rig
    raw = _client(g).chat.completions.with_raw_response.create(
        model="house-chat", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    done = raw.parse()
    assert done.model == "house-chat"  # the upstream answered "sim-small"
    assert raw.headers["x-sluice-route"] == "house-chat; target=house-chat@default"
    # the request log names the same target as the header, and the upstream beside it
    line = _log_line(g, raw.headers["x-request-id"])
    assert line["target"] == raw.headers["x-sluice-route"].split("target=")[1] and line["upstream"] == "sim", line
    # a name the upstream already uses comes back as it is
    assert _client(g).chat.completions.create(
        model="sim-small", max_tokens=3, messages=[{"role": "user", "content": "hi"}]).model == "sim-small"


def test_every_streamed_chunk_names_the_model_as_the_caller_did(rig):
    g, _ = rig
    chunks = list(_client(g).chat.completions.create(
        model="house-chat", max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "tell me something"}]))
    assert len(chunks) > 3 and {c.model for c in chunks} == {"house-chat"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    legacy = list(_client(g).completions.create(model="house-chat", prompt="once upon", max_tokens=5, stream=True))
    assert legacy and {c.model for c in legacy} == {"house-chat"}


def test_embeddings_and_legacy_completions_name_the_model_as_the_caller_did(rig):
    g, _ = rig
    assert _client(g).embeddings.create(model="house-embed", input="hello").model == "house-embed"
    assert _client(g).completions.create(model="house-chat", prompt="once upon", max_tokens=3).model == "house-chat"


def test_an_upstream_that_does_not_serve_the_model_is_logged_with_its_url_and_the_model(rig):
    g, s = rig
    s.faults(error_status=404, error_rate=1.0)
    try:
        for _ in range(3):
            with pytest.raises(openai.APIStatusError) as err:
                _client(g).chat.completions.create(model="misnamed", max_tokens=3,
                                                   messages=[{"role": "user", "content": "hi"}])
            assert err.value.status_code == 502 and s.url not in str(err.value.body)  # the caller sees no URL
    finally:
        s.clear_faults()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        noted = [line for line in g.log().splitlines() if "does not serve model" in line]
        if noted:
            break
        time.sleep(0.1)
    assert len(noted) == 1, noted  # once a minute for the pair, not once a request
    assert f"{s.url}/v1" in noted[0] and "'llama-typo'" in noted[0] and "misnamed@default" in noted[0], noted
