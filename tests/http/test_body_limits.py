"""Body limits hold on every listener: the data plane's model calls and ``/v1/token``
(``requests.max_body_bytes``) and the control plane (1 MiB), declared or chunked."""

from __future__ import annotations

import json

import httpx
import pytest

from support import start_gateway

LIMIT = 4096
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"


@pytest.fixture(scope="module")
def g(sim, tmp_path_factory):
    gw = start_gateway(tmp_path_factory.mktemp("bodies"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                       models=[{"name": "sim-small", "upstream": "sim"}],
                       identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                       extra={"requests": {"max_body_bytes": LIMIT}})
    yield gw
    gw.stop()


def _chunks(data: bytes):
    for i in range(0, len(data), 1000):
        yield data[i:i + 1000]


def assert_413(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text[:200]
    err = r.json()["error"]
    assert err["code"] == "payload_too_large" and err["type"] == "invalid_request_error"


def test_the_token_endpoint_refuses_a_body_over_the_limit(g):
    form = {"grant_type": GRANT, "subject_token_type": ACCESS, "subject_token": g.keys["a"]}
    assert httpx.post(g.v1 + "/token", data=form).status_code == 200
    assert_413(httpx.post(g.v1 + "/token", data={**form, "padding": "x" * LIMIT}))
    body = httpx.QueryParams({**form, "padding": "x" * LIMIT}).__str__().encode()
    assert_413(httpx.post(g.v1 + "/token", content=_chunks(body),  # no Content-Length: counted as it arrives
                          headers={"Content-Type": "application/x-www-form-urlencoded"}))


def test_the_control_plane_refuses_a_body_over_one_mebibyte(g):
    auth = {"Authorization": f"Bearer {g.admin_key}"}
    small = {"name": "fits", "owner": "o", "models": ["sim-small"]}
    assert httpx.post(g.admin_url + "/admin/identities", json=small, headers=auth).status_code == 201
    big = {"name": "big", "owner": "o" * (1024 * 1024)}
    assert_413(httpx.post(g.admin_url + "/admin/identities", json=big, headers=auth, timeout=10))
    assert_413(httpx.post(g.admin_url + "/admin/identities", content=_chunks(json.dumps(big).encode()),
                          headers={**auth, "Content-Type": "application/json"}, timeout=10))
    names = [i["name"] for i in httpx.get(g.admin_url + "/admin/identities", headers=auth).json()["data"]]
    assert "big" not in names
