"""``count_tokens`` is limited like any call but spends no tokens (issue 24): it takes a request of every
request limit it falls under (a 429 in Anthropic's shape, with retry-after, past it), never a token
of a token limit, and leaves a usage record with no tokens."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from support import Gateway, Sim, start_gateway

ASK = {"model": "sim-small", "messages": [{"role": "user", "content": "How many tokens is this sentence?"}]}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("count-limits")
    sim = Sim(tmp)
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-tokens", "upstream": "sim", "upstream_model": "sim-small"}],
        identities=[{"name": "app", "owner": "o@example.com", "models": ["sim-small", "sim-tokens"]}],
        extra={"limits": {"rules": [
            {"name": "rpm", "match": {"model": "sim-small"}, "requests_per_minute": 3},
            {"name": "itpm", "match": {"model": "sim-tokens"}, "input_tokens_per_minute": 20}]}})
    yield g
    g.stop()
    sim.stop()


def client(g: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=g.url, api_key=g.keys["app"], max_retries=0, timeout=15.0)


def test_count_tokens_takes_a_request_of_a_request_limit_and_is_refused_past_it(gw) -> None:
    c = client(gw)
    for _ in range(3):
        assert c.messages.count_tokens(**ASK).input_tokens > 0
    with pytest.raises(anthropic.RateLimitError) as err:
        c.messages.count_tokens(**ASK)
    assert err.value.body["error"]["type"] == "rate_limit_error"
    assert int(err.value.response.headers["retry-after"]) >= 1
    with pytest.raises(anthropic.RateLimitError):  # the same limit holds a call to the model
        c.messages.create(max_tokens=5, **ASK)
    rows = gw.admin("GET", "/admin/usage", params={"limit": 50}).json()["data"]
    counts = [r for r in rows if r["endpoint"] == "messages.count_tokens"]
    assert len(counts) == 4 and {(r["prompt_tokens"], r["completion_tokens"]) for r in counts} == {(0, 0)}
    assert sorted(r["status"] for r in counts) == [200, 200, 200, 429] and {r["api"] for r in counts} == {"messages"}


def test_count_tokens_spends_no_token_of_a_token_limit(gw) -> None:
    c = client(gw)
    ask = {**ASK, "model": "sim-tokens"}
    n = c.messages.count_tokens(**ask).input_tokens
    assert n <= 20 < 2 * n  # one call of this prompt fits the minute's 20 input tokens, two would not
    for _ in range(10):
        assert c.messages.count_tokens(**ask).input_tokens == n
    assert c.messages.create(max_tokens=3, **ask).usage.output_tokens == 3  # the counts took none of the 20
