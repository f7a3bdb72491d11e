"""Each limit type, on the memory and the Redis backend, with exact counts."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from support import IN_CI, REDIS_URL, Sim, free_port, require_redis, start_gateway  # noqa: F401 (imported from here too)

# "abc.abc.abc." is 7 prompt tokens for the sim (role + 6) and 7 for sluice's estimate (12 chars / 4 + 4 framing)
EXACT = "abc.abc.abc."


def limit_config(backend: str, **extra) -> dict:
    rules = [
        {"name": "rpm", "match": {"model": "m-rpm"}, "requests_per_minute": 5},
        {"name": "itpm", "match": {"model": "m-itpm"}, "input_tokens_per_minute": 35},
        {"name": "otpm", "match": {"model": "m-otpm"}, "output_tokens_per_minute": 50},
        {"name": "conc", "match": {"model": "m-conc"}, "concurrent_requests": 2},
        {"name": "budget", "match": {"model": "m-spend"}, "spend_per_day": 30.0, "spend_per_month": 1000.0},
        {"name": "team", "per": ["team"], "match": {"model": "m-team"}, "requests_per_minute": 3},
        {"name": "two-id", "match": {"model": "m-two"}, "requests_per_minute": 100},
        {"name": "two-model", "per": ["model"], "match": {"model": "m-two"}, "requests_per_minute": 4},
        # 1200 output tokens a minute refill 20 a second: after one 620-token reservation a second
        # one is 40 tokens short, so its retry-after is about two seconds (less what refilled between)
        {"name": "retry", "match": {"model": "m-retry"}, "output_tokens_per_minute": 1200},
        {"name": "month", "match": {"model": "m-month"}, "spend_per_month": 30.0},
        {"name": "settle", "match": {"model": "m-settle"}, "output_tokens_per_minute": 1500},
        {"name": "n", "match": {"model": "m-n"}, "output_tokens_per_minute": 50},
        {"name": "cap", "match": {"model": "m-cap"}, "output_tokens_per_minute": 500},
        {"name": "cached", "match": {"model": "m-cache"}, "spend_per_day": 1200.0},
        {"name": "bpe", "match": {"model": "m-gpt"}, "input_tokens_per_minute": 50},
        {"name": "chars", "match": {"model": "m-chars"}, "input_tokens_per_minute": 50},
    ]
    return {"limits": {"backend": backend, "redis_url": REDIS_URL, "key_prefix": f"t{uuid.uuid4().hex[:8]}:",
                       "max_tokens_cap": CAP, "rules": rules, **extra},
            "prices": {"m-spend": {"input": 0.0, "output": 1_000_000.0},  # 1.00 per output token
                       "m-month": {"input": 0.0, "output": 1_000_000.0},
                       # 1.00 per uncached input token, nothing for cached ones or output
                       "m-cache": {"input": 1_000_000.0, "cached_input": 0.0, "output": 0.0}},
            "teams": [{"name": "blue", "owner": "o"}]}


MODELS = ["m-rpm", "m-itpm", "m-otpm", "m-conc", "m-spend", "m-team", "m-two", "m-free", "m-retry", "m-month",
          "m-settle", "m-n", "m-cap", "m-cache", "m-chars"]
CAP = 1000


@pytest.fixture(scope="module", params=["memory", "redis"])
def lim(request, tmp_path_factory):
    if request.param == "redis":
        require_redis()
    tmp = tmp_path_factory.mktemp(f"limits-{request.param}")
    s = Sim(tmp)
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
        models=[*({"name": m, "upstream": "sim", "upstream_model": "sim-small"} for m in MODELS),
                {"name": "m-gpt", "upstream": "sim", "upstream_model": "gpt-4o-mini"}],  # counted with its real tokenizer
        identities=[{"name": "a", "owner": "o", "models": ["*"], "team": "blue"},
                    {"name": "b", "owner": "o", "models": ["*"], "team": "blue"},
                    {"name": "c", "owner": "o", "models": ["*"]}],
        # a Redis call on a busy machine can outlast the 0.25 s default: a 503, not the decision under test
        extra=limit_config(request.param, redis_timeout_s=5),
    )
    yield g, s
    g.stop()
    s.stop()


def chat(g, key: str, model: str, content: str = "hi", max_tokens: int = 10) -> httpx.Response:
    return g.post("/v1/chat/completions", key, json={"model": model, "max_tokens": max_tokens,
                                                     "messages": [{"role": "user", "content": content}]})


def statuses(g, key, model, n, **kw) -> list[int]:
    return [chat(g, key, model, **kw).status_code for _ in range(n)]


def test_requests_per_minute_admits_exactly_the_limit(lim):
    g, s = lim
    before = s.stats()["chat_requests"]
    assert statuses(g, g.keys["a"], "m-rpm", 7) == [200] * 5 + [429] * 2
    assert s.stats()["chat_requests"] - before == 5
    assert chat(g, g.keys["c"], "m-rpm").status_code == 200  # per identity: c has its own


def test_input_tokens_per_minute_admits_exactly_what_fits(lim):
    g, _ = lim
    assert statuses(g, g.keys["a"], "m-itpm", 7, content=EXACT) == [200] * 5 + [429] * 2


def test_a_prompt_bigger_than_the_limit_is_refused_before_the_upstream(lim):
    g, s = lim
    before = s.stats()["chat_requests"]
    r = chat(g, g.keys["b"], "m-itpm", content="word " * 200)
    assert r.status_code == 429 and "input tokens per minute" in r.json()["error"]["message"]
    assert s.stats()["chat_requests"] == before


def test_output_tokens_per_minute_reserves_max_tokens(lim):
    g, _ = lim
    assert statuses(g, g.keys["a"], "m-otpm", 7, max_tokens=10) == [200] * 5 + [429] * 2
    r = chat(g, g.keys["b"], "m-otpm", max_tokens=60)
    assert r.status_code == 429  # a reservation alone above the limit never fits


def test_concurrent_requests_admit_exactly_the_limit(lim):
    g, s = lim
    s.faults(delay_ms=600)
    try:
        async def burst() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as c:
                rs = await asyncio.gather(*[c.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['a']}"},
                                                   json={"model": "m-conc", "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "x"}]}) for _ in range(6)])
            return sorted(r.status_code for r in rs)
        assert asyncio.run(burst()) == [200, 200, 429, 429, 429, 429]
    finally:
        s.clear_faults()
    assert statuses(g, g.keys["a"], "m-conc", 3, max_tokens=2) == [200] * 3  # leases were released


def test_a_spent_budget_is_refused_before_the_upstream(lim):
    g, s = lim
    before = s.stats()["chat_requests"]
    got = statuses(g, g.keys["a"], "m-spend", 5, max_tokens=10)  # 10.00 each against 30.00 a day
    assert got == [200, 200, 200, 429, 429]
    assert s.stats()["chat_requests"] - before == 3
    r = chat(g, g.keys["a"], "m-spend", max_tokens=10)
    assert "spend per day" in r.json()["error"]["message"]


def test_a_spent_monthly_budget_is_refused_before_the_upstream(lim):
    g, s = lim
    before = s.stats()["chat_requests"]
    assert statuses(g, g.keys["a"], "m-month", 5, max_tokens=10) == [200, 200, 200, 429, 429]  # 10.00 each of 30.00
    assert s.stats()["chat_requests"] - before == 3
    assert "spend per month" in chat(g, g.keys["a"], "m-month", max_tokens=10).json()["error"]["message"]


def _short_answer(s: Sim) -> tuple[str, int]:
    """A prompt the sim answers, by its own choice, in far fewer tokens than 900."""
    for i in range(50):
        prompt = f"settle probe {i}"
        r = httpx.post(s.url + "/v1/chat/completions", json={"model": "sim-small", "max_tokens": 900,
                                                              "messages": [{"role": "user", "content": prompt}]})
        if r.json()["usage"]["completion_tokens"] < 200:
            return prompt, r.json()["usage"]["completion_tokens"]
    raise AssertionError("no short natural answer found")


def test_a_request_reserves_max_tokens_then_settles_to_what_the_upstream_reported(lim):
    g, s = lim
    prompt, produced = _short_answer(s)
    first = chat(g, g.keys["a"], "m-settle", content=prompt, max_tokens=900)  # reserves 900 of 1500
    assert first.status_code == 200 and first.json()["usage"]["completion_tokens"] == produced
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 1500 - 900
    # Had the 900 stayed reserved, 600 would be left and this would be refused; settled, it fits.
    second = chat(g, g.keys["a"], "m-settle", content=prompt, max_tokens=900)
    assert second.status_code == 200, second.text
    left = int(second.headers["x-ratelimit-remaining-tokens"])
    assert 1500 - produced - 900 <= left <= 1500 - produced - 900 + 100, (left, produced)  # + refill meanwhile


def test_a_request_reserves_max_tokens_times_n(lim):
    g, _ = lim
    ask = {"model": "m-n", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    r = g.post("/v1/chat/completions", g.keys["a"], json={**ask, "n": 6})
    assert r.status_code == 429 and "this request needs 60" in r.json()["error"]["message"]
    r = g.post("/v1/chat/completions", g.keys["b"], json={**ask, "n": 4})
    assert r.status_code == 200 and len(r.json()["choices"]) == 4


def test_a_request_without_max_tokens_reserves_the_cap(lim):
    g, _ = lim
    r = g.post("/v1/chat/completions", g.keys["a"], json={"model": "m-cap", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 429 and f"this request needs {CAP}" in r.json()["error"]["message"]
    assert chat(g, g.keys["a"], "m-cap", max_tokens=100).status_code == 200


def test_cached_input_tokens_are_charged_at_the_cached_price(lim):
    g, s = lim
    prompt = " ".join(f"c{i}" for i in range(399))  # 400 prompt tokens for the sim, 24 blocks of 16 cached on a repeat
    got = []
    for _ in range(3):
        r = chat(g, g.keys["a"], "m-cache", content=prompt, max_tokens=2)
        got.append((r.status_code, (r.json().get("usage") or {}).get("prompt_tokens_details")))
    # Each request reserves ~580.00 (its estimated prompt at the full price) of 1200.00 a day. The first
    # costs 400.00; a repeat 16.00 (384 cached tokens free), so a third still fits. At the full price the
    # second would cost 400.00 too and leave 400.00, too little for the third.
    assert [status for status, _ in got] == [200, 200, 200], got
    assert got[1][1]["cached_tokens"] == 384


def _needs(r: httpx.Response) -> str:
    assert r.status_code == 429, r.text
    return r.json()["error"]["message"].split("this request needs ")[1].split(".")[0]


def test_openai_models_are_counted_with_their_real_tokenizer_and_others_estimated(lim):
    import bpe_openai

    g, _ = lim
    text = "hello " * 100
    exact = len(bpe_openai.get_encoding(bpe_openai.encoding_name_for_model("gpt-4o-mini")).encode(text)) + 4
    estimated = (len(text) + 3) // 4 + 4  # four characters a token, four a message
    assert exact != estimated
    assert _needs(chat(g, g.keys["a"], "m-gpt", content=text)) == str(exact)
    assert _needs(chat(g, g.keys["a"], "m-chars", content=text)) == str(estimated)


def test_team_limits_are_shared_by_the_team(lim):
    g, _ = lim
    got = [chat(g, g.keys[k], "m-team").status_code for k in ("a", "b", "a", "b")]
    assert got == [200, 200, 200, 429]
    assert chat(g, g.keys["c"], "m-team").status_code == 200  # not in the team


def test_429_names_the_limit_and_carries_openai_headers(lim):
    g, _ = lim
    for _ in range(5):
        chat(g, g.keys["b"], "m-rpm")
    r = chat(g, g.keys["b"], "m-rpm")
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and err["code"] == "rate_limit_exceeded"
    assert "rpm (identity=cfg-b): requests per minute" in err["message"]
    assert int(r.headers["Retry-After"]) >= 1 and int(r.headers["retry-after-ms"]) > 0
    assert r.headers["x-ratelimit-limit-requests"] == "5" and r.headers["x-ratelimit-remaining-requests"] == "0"
    assert r.headers["x-ratelimit-reset-requests"].endswith("s")


def test_successful_answers_carry_ratelimit_headers(lim):
    g, _ = lim
    r = chat(g, g.keys["c"], "m-otpm", max_tokens=10)
    assert r.status_code == 200
    assert r.headers["x-ratelimit-limit-tokens"] == "50"
    assert 0 <= int(r.headers["x-ratelimit-remaining-tokens"]) <= 40


def test_headers_name_the_tightest_of_several_limits(lim):
    g, _ = lim
    first = chat(g, g.keys["c"], "m-two")
    second = chat(g, g.keys["a"], "m-two")  # another identity: its own 100, the model's shared 4
    assert first.status_code == second.status_code == 200
    assert [first.headers["x-ratelimit-limit-requests"], first.headers["x-ratelimit-remaining-requests"]] == ["4", "3"]
    assert [second.headers["x-ratelimit-limit-requests"], second.headers["x-ratelimit-remaining-requests"]] == ["4", "2"]
    reset_ms = second.headers["x-ratelimit-reset-requests"]
    assert reset_ms.endswith("ms") and 0 < int(reset_ms[:-2]) <= 30_000  # two of four used: full in 30 s at most


def test_unlimited_models_have_no_limit_headers(lim):
    g, _ = lim
    r = chat(g, g.keys["c"], "m-free")
    assert r.status_code == 200 and "x-ratelimit-limit-requests" not in r.headers


def test_the_sdk_retries_on_429_after_the_retry_after_ms_it_was_given_and_then_succeeds(lim):
    import openai

    g, s = lim
    sent: list[float] = []  # when each attempt left
    seen: list[tuple[float, int, str | None]] = []  # (when, status, retry-after-ms) of each answer

    def record(response: httpx.Response) -> None:
        seen.append((time.monotonic(), response.status_code, response.headers.get("retry-after-ms")))

    http = httpx.Client(event_hooks={"request": [lambda _: sent.append(time.monotonic())], "response": [record]},
                        timeout=30)
    client = openai.OpenAI(base_url=g.v1, api_key=g.keys["c"], max_retries=2, http_client=http)
    ask = {"model": "m-retry", "messages": [{"role": "user", "content": "x"}], "max_tokens": 620}
    assert client.chat.completions.create(**ask).usage.completion_tokens == 620
    before = s.stats()["chat_requests"]
    answer = client.chat.completions.create(**ask)  # 40 tokens short: refused once, then retried
    assert answer.usage.completion_tokens == 620
    statuses = [status for _, status, _ in seen[1:]]
    assert statuses[0] == 429 and statuses[-1] == 200, statuses
    waited_ms = (sent[2] - seen[1][0]) * 1000  # from the 429 arriving to the retry leaving
    promised_ms = int(seen[1][2])
    assert 200 <= promised_ms <= 2100, promised_ms
    assert waited_ms >= promised_ms * 0.95, (waited_ms, promised_ms)  # the SDK slept what it was told
    assert s.stats()["chat_requests"] - before == 1  # the refusal never reached the upstream
    http.close()


@pytest.mark.parametrize("mode,expected", [("closed", 503), ("open", 200)])
def test_unreachable_redis_fails_as_configured(sim, tmp_path, mode, expected):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    cfg = limit_config("redis", on_backend_failure=mode, redis_url=dead)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": m, "upstream": "sim", "upstream_model": "sim-small"} for m in MODELS],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}], extra=cfg, wait_for="/healthz")
    try:
        # readiness says what the replica can serve: failing closed it refuses limited calls (not ready),
        # failing open it serves them on local counters (ready, degraded); either way it says why
        ready = httpx.get(g.url + "/readyz", timeout=5)
        assert ready.status_code == (503 if mode == "closed" else 200), ready.text
        body = ready.json()
        assert body["limits"] == "unavailable" and body["status"] == ("not ready" if mode == "closed" else "degraded")
        assert any("limits backend unreachable" in why and mode in why for why in body["reasons"]), body
        r = chat(g, g.keys["a"], "m-rpm")
        assert r.status_code == expected
        if mode == "closed":
            assert r.json()["error"]["code"] == "limiter_unavailable" and "Retry-After" in r.headers
        else:  # the local fallback still limits
            assert statuses(g, g.keys["a"], "m-rpm", 5) == [200] * 4 + [429]
        assert chat(g, g.keys["a"], "m-free").status_code == 200  # no limit, no Redis needed
        metrics = httpx.get(g.admin_url + "/metrics").text
        assert 'sluice_limit_events_total{kind="backend_down"' in metrics
        assert "limit backend unreachable" in g.log()
    finally:
        g.stop()
