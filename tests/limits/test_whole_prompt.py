"""The reservation counts everything that reaches the model's context, not only message text:
a megabyte of tool definitions cannot pass as four tokens (issue 9, item 8)."""

from __future__ import annotations

import pytest

from support import Sim, start_gateway

LIMIT = 5_000  # input tokens a minute; each request below carries about twice that outside its message text
BIG = "w" * (8 * LIMIT)  # at four characters a token, twice the limit
SCHEMA = {"type": "object", "description": BIG, "properties": {"a": {"type": "string"}}}
USER = {"role": "user", "content": "hi"}

CASES = {
    "tools": {"messages": [USER], "tools": [{"type": "function", "function": {"name": "f", "parameters": SCHEMA}}]},
    "functions": {"messages": [USER], "functions": [{"name": "f", "parameters": SCHEMA}]},
    "response_format": {"messages": [USER],
                        "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMA}}},
    "tool_call_arguments": {"messages": [USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": "%s"}' % BIG}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}, USER]},
    # 7 images at 765 tokens each: 5,355
    "images": {"messages": [{"role": "user", "content": [{"type": "text", "text": "what are these?"}] + [
        {"type": "image_url", "image_url": {"url": "https://example.invalid/cat.png"}}] * 7}]},
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prompt")
    s = Sim(tmp)
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=[{"name": n, "owner": "o", "models": ["*"]} for n in CASES],
                      extra={"limits": {"rules": [{"name": "in", "input_tokens_per_minute": LIMIT}]}})
    yield g, s
    g.stop()
    s.stop()


@pytest.mark.parametrize("case", list(CASES))
def test_what_reaches_the_context_is_reserved_before_the_upstream(rig, case):
    g, s = rig
    before = s.stats()["chat_requests"]
    r = g.post("/v1/chat/completions", g.keys[case], json={"model": "m", "max_tokens": 1, **CASES[case]})
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert "input tokens per minute" in err["message"]
    needs = float(err["message"].split("this request needs ")[1].split(".")[0])
    assert needs > LIMIT
    assert s.stats()["chat_requests"] == before  # never sent


def test_plain_text_is_counted_as_before(rig):
    g, _ = rig
    r = g.post("/v1/chat/completions", g.keys["tools"], json={"model": "m", "max_tokens": 1, "messages": [USER]})
    assert r.status_code == 200
    # "hi" is one token at four characters a token, plus four for the message
    assert r.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - 5)


@pytest.fixture(scope="module")
def openai_tokenized(tmp_path_factory):
    """A model that sluice counts with OpenAI's real tokenizer (``bpe-openai``)."""
    tmp = tmp_path_factory.mktemp("bpe")
    s = Sim(tmp, model="gpt-4o-mini")
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
                      models=[{"name": "gpt-4o-mini", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"limits": {"rules": [{"name": "in", "input_tokens_per_minute": LIMIT}]}})
    yield g
    g.stop()
    s.stop()


def test_text_that_spells_a_special_token_is_counted_as_text(openai_tokenized):
    g = openai_tokenized
    content = "what does <|endoftext|> mean?"
    r = g.post("/v1/chat/completions", g.keys["a"],
               json={"model": "gpt-4o-mini", "max_tokens": 1, "messages": [{"role": "user", "content": content}]})
    assert r.status_code == 200, r.text
    # 11 tokens by OpenAI's tokenizer (8 at four characters a token), plus four for the message
    assert r.headers["x-ratelimit-remaining-tokens"] == str(LIMIT - 11 - 4)


def test_a_text_longer_than_the_tokenizer_takes_at_once_is_counted_whole(openai_tokenized):
    g = openai_tokenized
    r = g.post("/v1/chat/completions", g.keys["a"],
               json={"model": "gpt-4o-mini", "max_tokens": 1, "messages": [{"role": "user", "content": "a " * 600_000}]})
    assert r.status_code == 429, r.text
    # about 600,000 tokens by OpenAI's tokenizer, 300,000 at four characters a token
    needs = float(r.json()["error"]["message"].split("this request needs ")[1].split(".")[0])
    assert 599_000 < needs < 601_000
