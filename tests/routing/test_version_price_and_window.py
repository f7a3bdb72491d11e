"""A registry version's own price is what limits reserve and settle, and its context window refuses
a request that cannot fit before any upstream call (OpenAI's 400 ``context_length_exceeded``)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from support import Gateway, Sim, free_port, start_gateway

IDENTS = [{"name": "app", "owner": "o", "models": ["*"]}]
DEAR = 1_000_000.0  # 1.00 per output token


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp: Path = tmp_path_factory.mktemp("versions")
    # vLLM's extra parameters: chat requests decode into a wider type, which the window and the
    # limits must read as a chat request too
    s = Sim(tmp)
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout": 0.5}
    g = start_gateway(tmp, identities=IDENTS, models=[], upstreams=[{"name": "sim", "base_url": s.url + "/v1", "extra_params": "vllm"}, dead], extra={
        "registry": [{"name": "m", "versions": [
            {"version": "cheap", "upstream": "sim", "upstream_model": "sim-small", "approved": True},
            {"version": "dear", "upstream": "sim", "upstream_model": "sim-small", "approved": True,
             "price": {"input": 0.0, "output": DEAR}},
            {"version": "small", "upstream": "sim", "upstream_model": "sim-small", "approved": True,
             "context_window": 100},
            {"version": "gone", "upstream": "dead", "upstream_model": "sim-small", "approved": True}]}],
        "routes": [{"name": "dear", "match": {"models": ["m-dear"]}, "targets": [{"target": "m@dear"}]},
                   {"name": "cheap", "match": {"models": ["m-cheap"]}, "targets": [{"target": "m@cheap"}]},
                   {"name": "small", "match": {"models": ["m-small"]}, "targets": [{"target": "m@small"}]},
                   {"name": "spill", "match": {"models": ["m-spill"]}, "targets": [{"target": "m@gone"}],
                    "fallbacks": ["m@small"]}],
        # the model's own price: free; only the dear version costs anything
        "prices": {"m": {"input": 0.0, "output": 0.0}},
        "limits": {"rules": [{"name": "budget", "match": {"model": "m"}, "spend_per_day": 30.0}]},
    })
    yield g, s
    g.stop()
    s.stop()


def chat(g: Gateway, model: str, content: str = "hi", **kw: object):
    return g.post("/v1/chat/completions", g.keys["app"],
                  json={"model": model, "messages": [{"role": "user", "content": content}], **kw})


def test_the_chosen_versions_price_is_reserved_and_settled(gw: tuple[Gateway, Sim]) -> None:
    g, s = gw
    before = s.stats()["chat_requests"]
    # 10.00 each at the dear version's price against 30.00 a day: reserved at 10, settled at 10
    # (reserving at the model's free price lets a fourth through; settling at it never fills the budget)
    got = [chat(g, "m-dear", max_tokens=10) for _ in range(5)]
    assert [r.status_code for r in got] == [200, 200, 200, 429, 429]
    assert "spend per day" in got[3].json()["error"]["message"]
    assert s.stats()["chat_requests"] - before == 3
    # the same model's cheap version costs nothing, so the spent budget does not stop it
    assert [chat(g, "m-cheap", max_tokens=10).status_code for _ in range(3)] == [200] * 3
    # the ledger charges what the limits settled: the dear version's price, per record and summed
    by_route = {row["key"]: row for row in g.admin("GET", "/admin/usage/summary?by=route").json()["data"]}
    assert by_route["dear"]["requests"] == 5 and Decimal(by_route["dear"]["cost"]) == 30
    assert Decimal(by_route["cheap"]["cost"]) == 0


def test_a_request_beyond_the_versions_context_window_is_refused_before_the_upstream(gw: tuple[Gateway, Sim]) -> None:
    g, s = gw
    before = s.stats()["chat_requests"]
    long_prompt = chat(g, "m-small", "word " * 200, max_tokens=5)  # ~250 tokens of prompt
    too_much_output = chat(g, "m-small", max_completion_tokens=500, top_k=5)
    for r in (long_prompt, too_much_output):
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["type"] == "invalid_request_error"
        assert "maximum context length is 100 tokens" in err["message"]
        assert r.headers["x-sluice-route"] == "small; target=m@small"
    assert "500 in the completion" in too_much_output.json()["error"]["message"]
    assert s.stats()["chat_requests"] == before  # neither reached the upstream
    fits = chat(g, "m-small", max_tokens=20)
    assert fits.status_code == 200
    # a version without a window is the upstream's to judge
    assert chat(g, "m-cheap", "word " * 200, max_tokens=5).status_code == 200


def test_no_fallback_goes_to_a_version_whose_window_the_request_does_not_fit(gw: tuple[Gateway, Sim]) -> None:
    g, s = gw
    short = chat(g, "m-spill", max_tokens=5)  # the primary is unreachable: the small fallback serves it
    assert short.status_code == 200 and short.headers["x-sluice-route"] == "spill; target=m@small"
    before = s.stats()["chat_requests"]
    long = chat(g, "m-spill", "word " * 200, max_tokens=5)
    assert long.status_code == 502 and long.json()["error"]["code"] == "upstream_unreachable"
    assert s.stats()["chat_requests"] == before  # the fallback that cannot hold it was not tried
    why = g.admin("GET", f"/admin/routes/decisions/{long.headers['x-request-id']}").json()
    assert [a["target"] for a in why["attempts"]] == ["m@gone"]
    assert any(x.startswith("m@small: context window 100 <") for x in why["skipped"])
