"""Isolated listeners (issue 28 item 3): a `data_plane` list of named listeners, each serving its own callers
and models; a credential or a model a listener does not serve is answered there exactly as an unknown one."""

from __future__ import annotations

import re
import socket
import sqlite3
import statistics
import subprocess
import sys
import time

import httpx
import openai
import pytest
import yaml

from sluice.identity import generate
from support import PEPPER, free_port, start_gateway

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
IDENTITIES = [
    {"name": "internal-svc", "owner": "platform@example.com", "models": ["sim-*"]},
    {"name": "web-app", "owner": "web@example.com", "models": ["sim-small", "sim-embed"]},
]
MODELS = [{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}]
_VOLATILE = {"date", "x-request-id"}


def _listeners(public: int, internal: int) -> list[dict]:
    return [
        {"name": "public", "port": public, "serves": {"identities": ["web-app"], "models": ["sim-small"]}},
        {"name": "internal", "port": internal, "serves": {"identities": ["internal-svc", "web-app"]}},
    ]


@pytest.fixture(scope="module")
def two(sim, tmp_path_factory):
    """One sluice with a public and an internal listener."""
    public, internal = free_port(), free_port()
    g = start_gateway(tmp_path_factory.mktemp("listeners"),
                      upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5, "total_timeout": 20}],
                      models=MODELS, identities=IDENTITIES, extra={"data_plane": _listeners(public, internal)})
    g.public, g.internal = f"http://127.0.0.1:{public}", f"http://127.0.0.1:{internal}"
    yield g
    g.stop()


def _post(base: str, path: str, key: str, **kw) -> httpx.Response:
    return httpx.post(base + path, headers={"Authorization": f"Bearer {key}"}, timeout=10, **kw)


def _same_answer(a: httpx.Response, b: httpx.Response) -> None:
    """Status, body bytes and every header but the date and the request id."""
    assert a.status_code == b.status_code
    assert a.content == b.content
    strip = lambda r: sorted((k, v) for k, v in r.headers.items() if k.lower() not in _VOLATILE)  # noqa: E731
    assert strip(a) == strip(b)


def test_an_internal_key_on_the_public_listener_is_answered_byte_for_byte_as_an_unknown_key(two):
    internal_key, unknown = two.keys["internal-svc"], generate("dev")
    assert _post(two.internal, "/v1/chat/completions", internal_key, json=CHAT).status_code == 200
    for method, path, kw in (("POST", "/v1/chat/completions", {"json": CHAT}), ("GET", "/v1/models", {}),
                             ("POST", "/v1/embeddings", {"json": {"model": "sim-embed", "input": "x"}})):
        refused, missing = (httpx.request(method, two.public + path, headers={"Authorization": f"Bearer {k}"}, timeout=10, **kw)
                            for k in (internal_key, unknown))
        assert refused.status_code == 401, (path, refused.text)
        _same_answer(refused, missing)
    # the token endpoint too: a key the listener does not serve cannot be exchanged there
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"}
    refused, missing = (httpx.post(two.public + "/v1/token", data={**form, "subject_token": k}) for k in (internal_key, unknown))
    assert refused.status_code == 401
    _same_answer(refused, missing)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=two.public + "/v1", api_key=internal_key, max_retries=0).chat.completions.create(**CHAT)


def test_a_token_minted_on_the_internal_listener_is_refused_on_the_public_one_as_an_unknown_identity(two):
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": two.keys["internal-svc"],
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"}
    got = httpx.post(two.internal + "/v1/token", data=form)
    assert got.status_code == 200, got.text
    token = got.json()["access_token"]
    assert _post(two.internal, "/v1/chat/completions", token, json=CHAT).status_code == 200
    r = _post(two.public, "/v1/chat/completions", token, json=CHAT)
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "The identity behind this token is disabled or unknown."


def test_a_refused_key_takes_no_longer_than_an_unknown_one(two):
    """No timing oracle either: interleaved, the medians of the two refusals are within a millisecond (or
    30% of the faster, on a machine loaded enough that a millisecond is noise)."""
    keys = {"refused": two.keys["internal-svc"], "unknown": generate("dev")}
    took: dict[str, list[float]] = {k: [] for k in keys}
    with httpx.Client(base_url=two.public, timeout=10) as client:
        for _ in range(60):
            for name, key in keys.items():
                t0 = time.perf_counter()
                assert client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}).status_code == 401
                took[name].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in took.items()}
    assert abs(medians["refused"] - medians["unknown"]) < max(0.001, 0.3 * min(medians.values())), medians


def test_the_public_listener_serves_only_the_models_it_lists(two):
    key = two.keys["web-app"]
    assert _post(two.public, "/v1/chat/completions", key, json=CHAT).status_code == 200
    # sim-embed is within web-app's scopes and served on the internal listener, not on the public one
    unlisted = _post(two.public, "/v1/embeddings", key, json={"model": "sim-embed", "input": "x"})
    missing = _post(two.public, "/v1/embeddings", key, json={"model": "sim-embez", "input": "x"})
    assert unlisted.status_code == missing.status_code == 404
    assert unlisted.content.replace(b"sim-embed", b"X") == missing.content.replace(b"sim-embez", b"X")
    assert _post(two.internal, "/v1/embeddings", key, json={"model": "sim-embed", "input": "x"}).status_code == 200
    listed = {base: sorted(m.id for m in openai.OpenAI(base_url=base + "/v1", api_key=key).models.list())
              for base in (two.public, two.internal)}
    assert listed == {two.public: ["sim-small"], two.internal: ["sim-embed", "sim-small"]}


def test_usage_rows_metrics_and_decisions_name_the_listener(two):
    key = two.keys["web-app"]
    ids = {}
    for name, base in (("public", two.public), ("internal", two.internal)):
        r = _post(base, "/v1/chat/completions", key, json=CHAT)
        assert r.status_code == 200
        ids[r.headers["x-request-id"]] = name
        decision = two.admin("GET", f"/admin/routes/decisions/{r.headers['x-request-id']}")
        assert decision.status_code == 200 and decision.json()["listener"] == name
    listed = two.admin("GET", "/admin/usage").json()["data"]  # the listing flushes the ledger first
    assert {r["request_id"]: r["listener"] for r in listed if r["request_id"] in ids} == ids
    with sqlite3.connect(two.tmp / "sluice.db") as db:  # the column itself
        rows = dict(db.execute(f"SELECT request_id, listener FROM usage WHERE request_id IN ({', '.join('?' * len(ids))})",
                               tuple(ids)).fetchall())
    assert rows == ids
    text = two.admin("GET", "/metrics").text
    for name in ("public", "internal"):
        assert re.search(rf'sluice_requests_total\{{endpoint="chat.completions",listener="{name}",model="sim-small",'
                         r'status="200"\} [1-9]', text), text[:2000]


def _check(tmp_path, config: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(path)], capture_output=True, text=True,
                          timeout=60)


@pytest.mark.parametrize("data_plane, control, why", [
    ([{"port": 18001}], 18000, "each listener of a list needs a name - at `$.data_plane[0].name`"),
    ([{"name": "a", "port": 18001}, {"name": "a", "port": 18002}], 18000, "duplicate name 'a' - at `$.data_plane[1].name`"),
    ([{"name": "a", "port": 18001}, {"name": "b", "port": 18000}], 18000,
     "127.0.0.1:18000 is taken by the control plane; every listener needs an address of its own - at `$.data_plane[1].port`"),
    ({"port": 18000}, 18000, "is taken by the control plane; every listener needs an address of its own - at `$.data_plane.port`"),
    ([{"name": "a", "host": "0.0.0.0", "port": 18000}], 18000, "0.0.0.0:18000 is taken by the control plane"),
    ([{"name": "a", "port": 18001}, {"name": "b", "port": 18001}], 18000,
     "127.0.0.1:18001 is taken by listener 'a'; every listener needs an address of its own - at `$.data_plane[1].port`"),
    ({"port": 18001, "serves": {"models": ["m"]}}, 18000, "a listener that narrows what it serves needs a name - at `$.data_plane.serves`"),
    ([], 18000, "at least one listener is needed - at `$.data_plane`"),
    ([{"name": "a", "port": 18001, "serves": {"environments": ["staging"]}}], 18000, "$.data_plane[0].serves.environments[0]"),
])
def test_config_refuses_listeners_that_are_not_apart(tmp_path, data_plane, control, why):
    got = _check(tmp_path, {"data_plane": data_plane, "control_plane": {"port": control}})
    assert got.returncode == 2, got.stdout
    assert why in " ".join(got.stderr.split()), got.stderr


def test_a_listener_refused_at_start_names_its_place_in_the_list(tmp_path):
    """A data-plane listener that cannot bind stops the start (exit 1) naming `data_plane[1].port`."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        port = busy.getsockname()[1]
        config = {"data_plane": [{"name": "a", "port": free_port()}, {"name": "b", "port": port}],
                  "control_plane": {"port": free_port()}, "store": {"url": f"sqlite:///{tmp_path}/sluice.db"},
                  "security": {"pepper": PEPPER}}
        (tmp_path / "sluice.yaml").write_text(yaml.safe_dump(config))
        got = subprocess.run([sys.executable, "-m", "sluice", "serve", "--config", str(tmp_path / "sluice.yaml")],
                             capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert got.returncode == 1, got.stderr[-2000:]
    assert f"cannot listen on 127.0.0.1:{port} (address already in use): stop what listens there, or set another" \
           " data_plane[1].port" in " ".join(got.stderr.split())


@pytest.mark.timeout(600)  # a supervisor and two workers to start
def test_every_worker_serves_every_listener_and_refuses_alike(sim, tmp_path):
    """--workers 2: both listeners bound by each worker (SO_REUSEPORT); the refusal holds on every worker."""
    public, internal = free_port(), free_port()
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=MODELS,
                      identities=IDENTITIES, extra={"data_plane": _listeners(public, internal)}, args=["--workers", "2"])
    try:
        where = f"data plane on public 127.0.0.1:{public}, internal 127.0.0.1:{internal}"
        deadline = time.monotonic() + 240  # worker 1 starts once worker 0 is ready: a whole start on a busy machine
        while f"worker 1 of 2: {where}" not in g.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert f"worker 1 of 2: {where}" in g.log() and f"{where}, control plane" in g.log()
        for _ in range(40):  # new connections each: the kernel spreads them over the workers
            ok = _post(f"http://127.0.0.1:{internal}", "/v1/chat/completions", g.keys["internal-svc"], json=CHAT)
            assert ok.status_code == 200
            refused = _post(f"http://127.0.0.1:{public}", "/v1/chat/completions", g.keys["internal-svc"], json=CHAT)
            assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
        assert _post(f"http://127.0.0.1:{public}", "/v1/chat/completions", g.keys["web-app"], json=CHAT).status_code == 200
    finally:
        g.stop()
