"""A corpus of bad requests: each gets a clear OpenAI-shaped error with the right status,
never a 5xx, a stack trace, an internal URL or a secret."""

from __future__ import annotations

import json

import httpx
import pytest

OK_MSG = [{"role": "user", "content": "hi"}]
DEEP = "[" * 100 + "]" * 100

# (case id, method, path, body (dict = JSON, bytes/str = raw), extra headers, status, error code or None)
CASES: list[tuple] = [
    ("empty body", "POST", "/v1/chat/completions", b"", {}, 400, None),
    ("not json", "POST", "/v1/chat/completions", b"hello", {}, 400, "invalid_json"),
    ("truncated json", "POST", "/v1/chat/completions", b'{"model": "sim-small", "messages": [', {}, 400, "invalid_json"),
    ("json array", "POST", "/v1/chat/completions", b"[]", {}, 400, None),
    ("json string", "POST", "/v1/chat/completions", b'"x"', {}, 400, None),
    ("json null", "POST", "/v1/chat/completions", b"null", {}, 400, None),
    ("json number", "POST", "/v1/chat/completions", b"42", {}, 400, None),
    ("trailing garbage", "POST", "/v1/chat/completions", b'{"model":"sim-small","messages":[{"role":"user","content":"x"}]} x', {}, 400, "invalid_json"),
    ("invalid utf-8", "POST", "/v1/chat/completions", b'{"model":"\xff\xfe","messages":[]}', {}, 400, None),
    ("missing model", "POST", "/v1/chat/completions", {"messages": OK_MSG}, {}, 400, None),
    ("missing messages", "POST", "/v1/chat/completions", {"model": "sim-small"}, {}, 400, None),
    ("empty messages", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": []}, {}, 400, None),
    ("model not string", "POST", "/v1/chat/completions", {"model": 7, "messages": OK_MSG}, {}, 400, None),
    ("model empty", "POST", "/v1/chat/completions", {"model": "", "messages": OK_MSG}, {}, 400, None),
    ("model huge", "POST", "/v1/chat/completions", {"model": "m" * 5000, "messages": OK_MSG}, {}, 400, None),
    ("messages not list", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": "hi"}, {}, 400, None),
    ("message not object", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": ["hi"]}, {}, 400, None),
    ("unknown role", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": [{"role": "wizard", "content": "x"}]}, {}, 400, None),
    ("missing role", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": [{"content": "x"}]}, {}, 400, None),
    ("content number", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": [{"role": "user", "content": 5}]}, {}, 400, None),
    ("temperature too high", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "temperature": 3}, {}, 400, None),
    ("temperature string", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "temperature": "hot"}, {}, 400, None),
    ("top_p above 1", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "top_p": 1.5}, {}, 400, None),
    ("max_tokens zero", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "max_tokens": 0}, {}, 400, None),
    ("max_tokens negative", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "max_tokens": -5}, {}, 400, None),
    ("max_tokens float", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "max_tokens": 1.5}, {}, 400, None),
    ("n zero", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "n": 0}, {}, 400, None),
    ("stream not bool", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "stream": "yes"}, {}, 400, None),
    ("stream_options unknown", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "stream": True, "stream_options": {"bogus": 1}}, {}, 400, None),
    ("stop too many", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "stop": ["a", "b", "c", "d", "e"]}, {}, 400, None),
    ("presence penalty out of range", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "presence_penalty": 9}, {}, 400, None),
    ("top_logprobs too many", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "top_logprobs": 50}, {}, 400, None),
    ("tools not list", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "tools": "all"}, {}, 400, None),
    ("unknown top-level field", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "upstream_url": "http://evil"}, {}, 400, None),
    ("unknown field base_url", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "api_base": "http://169.254.169.254"}, {}, 400, None),
    ("metadata non-string", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": OK_MSG, "metadata": {"a": 1}}, {}, 400, None),
    ("deeply nested json", "POST", "/v1/chat/completions", ('{"model":"sim-small","messages":' + DEEP + "}").encode(), {}, 400, "json_too_deep"),
    ("deep inside content parts", "POST", "/v1/chat/completions", ('{"model":"sim-small","messages":[{"role":"user","content":[{"type":"text","x":' + DEEP + "}]}]}").encode(), {}, 400, "json_too_deep"),
    ("body too large", "POST", "/v1/chat/completions", {"model": "sim-small", "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}, {}, 413, "payload_too_large"),
    ("form content type", "POST", "/v1/chat/completions", b"model=sim-small", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    ("text content type", "POST", "/v1/chat/completions", json.dumps({"model": "sim-small", "messages": OK_MSG}).encode(), {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ("unknown model", "POST", "/v1/chat/completions", {"model": "gpt-99", "messages": OK_MSG}, {}, 404, "model_not_found"),
    ("model outside scope", "POST", "/v1/chat/completions", {"model": "sim-secret", "messages": OK_MSG}, {}, 404, "model_not_found"),
    ("model path traversal", "POST", "/v1/chat/completions", {"model": "../../etc/passwd", "messages": OK_MSG}, {}, 404, "model_not_found"),
    ("model with url", "POST", "/v1/chat/completions", {"model": "http://169.254.169.254/latest", "messages": OK_MSG}, {}, 404, "model_not_found"),
    ("sql in model", "POST", "/v1/chat/completions", {"model": "x' OR '1'='1", "messages": OK_MSG}, {}, 404, "model_not_found"),
    ("embeddings missing input", "POST", "/v1/embeddings", {"model": "sim-embed"}, {}, 400, None),
    ("embeddings empty list", "POST", "/v1/embeddings", {"model": "sim-embed", "input": []}, {}, 400, None),
    ("embeddings mixed list", "POST", "/v1/embeddings", {"model": "sim-embed", "input": ["a", 1]}, {}, 400, None),
    ("embeddings empty string", "POST", "/v1/embeddings", {"model": "sim-embed", "input": [""]}, {}, 400, None),
    ("embeddings bad format", "POST", "/v1/embeddings", {"model": "sim-embed", "input": "a", "encoding_format": "hex"}, {}, 400, None),
    ("embeddings dimensions zero", "POST", "/v1/embeddings", {"model": "sim-embed", "input": "a", "dimensions": 0}, {}, 400, None),
    ("embeddings object input", "POST", "/v1/embeddings", {"model": "sim-embed", "input": {"a": 1}}, {}, 400, None),
    ("embeddings unknown field", "POST", "/v1/embeddings", {"model": "sim-embed", "input": "a", "foo": True}, {}, 400, None),
    ("unknown path", "POST", "/v1/completions-v2", {"model": "sim-small"}, {}, 404, "unknown_url"),
    ("unknown root path", "GET", "/admin/identities", None, {}, 404, "unknown_url"),
    ("wrong method on chat", "GET", "/v1/chat/completions", None, {}, 405, "method_not_allowed"),
    ("wrong method on models", "POST", "/v1/models", {}, {}, 405, "method_not_allowed"),
    ("delete on embeddings", "DELETE", "/v1/embeddings", None, {}, 405, "method_not_allowed"),
    ("path with encoded traversal", "GET", "/v1/%2e%2e/%2e%2e/etc/passwd", None, {}, 404, "unknown_url"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_request_gets_a_clear_error(gw, sim, case):
    _, method, path, body, headers, status, code = case
    headers = {"Authorization": f"Bearer {gw.keys['app']}", **headers}
    if isinstance(body, dict):
        content = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    else:
        content = body
    r = httpx.request(method, gw.url + path, content=content, headers=headers, timeout=30)
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert err["message"] and isinstance(err["message"], str)
    assert err["type"] in {"invalid_request_error", "authentication_error", "permission_error"}
    if code is not None:
        assert err["code"] == code
    text = r.text
    assert "Traceback" not in text and 'File "' not in text
    assert sim.url not in text and f"127.0.0.1:{sim.port}" not in text
    assert gw.keys["app"] not in text


def test_the_corpus_itself_holds_at_least_50_cases():
    """A check of this file's own list, not of the gateway: the corpus must not quietly shrink."""
    assert len(CASES) >= 50


def test_unrecognized_argument_is_named(gw):
    r = gw.post("/v1/chat/completions", gw.keys["app"], json={"model": "sim-small", "messages": OK_MSG, "upstream_url": "x"})
    err = r.json()["error"]
    assert err["param"] == "upstream_url" and "upstream_url" in err["message"]


def test_invalid_value_names_the_parameter(gw):
    r = gw.post("/v1/chat/completions", gw.keys["app"], json={"model": "sim-small", "messages": OK_MSG, "temperature": 9})
    assert r.json()["error"]["param"] == "temperature"


# Every integer parameter bounded to what the API allows, limits on or off (this gateway has no
# limits): just past a bound is a 400 naming the parameter, and nothing reaches the model.
OUT_OF_RANGE = [
    ("/v1/chat/completions", "max_tokens", 2**70), ("/v1/chat/completions", "max_tokens", 2**31),
    ("/v1/chat/completions", "max_completion_tokens", 2**70), ("/v1/chat/completions", "n", 129),
    ("/v1/chat/completions", "top_logprobs", 21), ("/v1/chat/completions", "top_logprobs", -1),
    ("/v1/chat/completions", "seed", 2**63), ("/v1/chat/completions", "seed", -(2**63) - 1),
    ("/v1/chat/completions", "logit_bias", {"50256": 101}), ("/v1/chat/completions", "logit_bias", {"50256": -100.5}),
    ("/v1/chat/completions", "logit_bias", {"1234567890": 1}), ("/v1/chat/completions", "logit_bias", {"-1": 1}),
    ("/v1/chat/completions", "logit_bias", {str(i): 1 for i in range(301)}),
    ("/v1/embeddings", "dimensions", 2**70), ("/v1/embeddings", "dimensions", 65537),
    ("/v1/embeddings", "input", [2**70]), ("/v1/embeddings", "input", [[1, -1]]), ("/v1/embeddings", "input", [[]]),
]


@pytest.mark.parametrize(("path", "param", "value"), OUT_OF_RANGE, ids=[f"{p}={str(v)[:24]}" for _, p, v in OUT_OF_RANGE])
def test_an_integer_parameter_past_what_the_api_allows_is_refused_naming_it_with_limits_off(gw, sim, path, param, value):
    base = {"model": "sim-small", "messages": OK_MSG} if path.endswith("completions") else {"model": "sim-embed", "input": "a"}
    before = sim.stats()["requests_total"]
    r = gw.post(path, gw.keys["app"], json={**base, param: value})
    assert r.status_code == 400, r.text[:300]
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"].startswith(param) and param in err["message"], err
    assert sim.stats()["requests_total"] == before


def test_integer_parameters_at_their_bounds_reach_the_model(gw):
    """The other side of the bounds: the extremes the API allows are served."""
    for extra in ({"seed": 2**63 - 1, "n": 128}, {"seed": -(2**63)}, {"logit_bias": {"0": -100, "999999999": 100}}):
        r = gw.post("/v1/chat/completions", gw.keys["app"], json={"model": "sim-small", "messages": OK_MSG, "max_tokens": 1, **extra})
        assert r.status_code == 200, (extra, r.text[:300])
    r = gw.post("/v1/embeddings", gw.keys["app"], json={"model": "sim-embed", "input": [[0, 2**31 - 1]], "dimensions": 4096})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 4096, r.text[:300]


def test_bad_input_reaches_no_model(gw, sim):
    before = sim.stats()["requests_total"]
    for _, method, path, body, headers, status, _code in CASES[:30]:
        content = json.dumps(body).encode() if isinstance(body, dict) else body
        httpx.request(method, gw.url + path, content=content,
                      headers={"Authorization": f"Bearer {gw.keys['app']}", **headers})
    assert sim.stats()["requests_total"] == before
