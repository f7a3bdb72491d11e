"""No input makes sluice answer 500 or echo the caller's bytes: deep JSON, deep JWTs, non-numeric
query numbers, oversized or too many headers, over-long URLs. Every one gets an OpenAI-shaped
4xx with a fixed message. A model call is authenticated from its headers before a large body
is read (an alternative HTTP server must behave the same: these tests start sluice through
tests/support.py and speak raw HTTP where a client library would hide the behaviour)."""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import openai
import pytest

from local_issuer import LocalIssuer
from support import start_gateway

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT = "urn:ietf:params:oauth:token-type:jwt"
MARKER = "zq7hostilemarker"


@pytest.fixture(scope="module")
def hostile(sim, tmp_path_factory):
    """A gateway that trusts one federated issuer (from a file), so /v1/token parses workload JWTs."""
    tmp = tmp_path_factory.mktemp("hostile")
    issuer = LocalIssuer()
    (tmp / "jwks.json").write_text(json.dumps(issuer.jwks))
    issuer.stop()
    g = start_gateway(
        tmp,
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[{"name": "app", "owner": "a@example.com", "models": ["sim-small"]}],
        extra={"federation": [{"name": "ci", "issuer": "https://ci.test", "audience": "sluice",
                               "jwks_file": str(tmp / "jwks.json"),
                               "rules": [{"match": {"sub": "x"}, "identity": "app"}]}]},
    )
    yield g
    g.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _deep_jwt(depth: int, where: str) -> str:
    deep = _b64(b'{"a":' + b"[" * depth + b"]" * depth + b"}")
    plain = _b64(b'{"alg":"ES256","typ":"JWT"}')
    # A plain payload names the trusted issuer, so a deep header is parsed by verification too.
    header, payload = (deep, _b64(b'{"sub":"x","iss":"https://ci.test","aud":"sluice"}')) if where == "header" \
        else (plain, deep)
    return f"{header}.{payload}.{_b64(b'sig')}"


def assert_envelope(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert "Traceback" not in r.text and MARKER not in r.text
    return err


def test_token_endpoint_answers_json_nested_100000_deep_with_a_400(hostile):
    body = "[" * 100_000 + "]" * 100_000
    r = httpx.post(hostile.v1 + "/token", content=body, headers={"Content-Type": "application/json"})
    assert_envelope(r, 400)


@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_deeply_nested_unverified_jwt_is_refused_with_401_on_the_data_plane(hostile, where):
    r = httpx.post(hostile.v1 + "/chat/completions", headers={"Authorization": f"Bearer {_deep_jwt(5000, where)}"},
                   json={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}]})
    assert_envelope(r, 401)


@pytest.mark.parametrize("where", ["header", "payload"])
def test_a_deeply_nested_workload_jwt_is_refused_at_token_exchange(hostile, where):
    r = httpx.post(hostile.v1 + "/token", data={"grant_type": GRANT, "subject_token_type": JWT,
                                                "subject_token": _deep_jwt(5000, where)})
    assert r.status_code in (400, 401)
    assert_envelope(r, r.status_code)


@pytest.mark.parametrize("query", ["limit=nan", "limit=inf", "limit=-inf", "since=nan", "limit=1e999", "limit=abc"])
def test_non_numeric_numbers_in_a_usage_query_are_a_400_naming_the_parameter(hostile, query):
    r = hostile.admin("GET", f"/admin/usage?{query}")
    err = assert_envelope(r, 400)
    assert err["param"] == query.split("=")[0]


def test_changes_query_with_limit_nan_is_a_400(hostile):
    assert_envelope(hostile.admin("GET", "/admin/changes?limit=nan"), 400)


@pytest.mark.parametrize("plane", ["data", "control"])
def test_an_oversized_header_is_a_431_envelope_that_echoes_nothing(hostile, plane):
    url = hostile.url if plane == "data" else hostile.admin_url
    r = httpx.get(url + "/v1/models", headers={"X-Big": MARKER * 2000})
    err = assert_envelope(r, 431)
    assert err["code"] == "request_header_too_large"
    assert MARKER not in hostile.log()


def test_too_many_headers_is_a_431_envelope(hostile):
    r = httpx.get(hostile.url + "/v1/models", headers={f"X-H{i}": MARKER for i in range(300)})
    assert_envelope(r, 431)


def test_an_overlong_url_is_a_414_envelope_that_echoes_nothing(hostile):
    r = httpx.get(hostile.url + "/v1/models?q=" + MARKER * 1000)
    assert_envelope(r, 414)
    assert MARKER not in hostile.log()


def test_a_malformed_request_line_is_a_400_envelope(hostile):
    raw = _raw(hostile.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nBad Header: " + MARKER.encode() + b"\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"400"
    assert set(json.loads(body)["error"]) == {"message", "type", "param", "code"}
    assert MARKER.encode() not in raw


def _raw(port: int, request: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are; read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


@pytest.mark.parametrize("framing", [b"Content-Length: 3000000", b"Transfer-Encoding: chunked"])
@pytest.mark.parametrize("auth", [b"", b"Authorization: Bearer slk_dev_notarealkeynotarealkeynotarealkey00\r\n"])
def test_a_model_call_without_a_valid_credential_is_refused_before_its_body_arrives(hostile, framing, auth):
    # Only the headers are sent; a gateway that waits for the body before authenticating
    # never answers, and the read times out.
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + auth + framing + b"\r\n\r\n")
    t0 = time.monotonic()
    raw = _raw(hostile.port, head, timeout=10.0)
    assert raw.startswith(b"HTTP/1.1 401"), raw[:200]
    assert time.monotonic() - t0 < 5.0
    body = json.loads(raw.partition(b"\r\n\r\n")[2])
    assert body["error"]["type"] == "authentication_error"


def test_a_large_body_with_a_valid_key_is_still_served(hostile):
    client = openai.OpenAI(base_url=hostile.v1, api_key=hostile.keys["app"], max_retries=0)
    big = "w" * 200_000  # one 200 kB "token" for the sim: past the size where the headers are checked first
    out = client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": big}], max_tokens=3)
    assert out.choices[0].message.content
