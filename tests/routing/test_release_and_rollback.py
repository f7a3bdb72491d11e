"""Release and rollback: weight shifts, approvals and rollbacks take effect at once on the replica
that made them, reach the other replicas through the store within a second, survive a restart
(the file never overwrites them), are in the change log, and drop no request in flight."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import httpx
import openai
import pytest

from store.pg_databases import drop_pg_database, fresh_pg_database
from support import Gateway, Sim, start_gateway
from sluice.identity import generate

VERSIONS = [{"version": "v1", "upstream": "sim", "upstream_model": "sim-small", "approved": True},
            {"version": "v2", "upstream": "sim", "upstream_model": "sim-small", "approved": True}]
ROUTES = [{"name": "chat", "match": {"models": ["chat"]}, "targets": [{"target": "chat@v1", "weight": 100}]}]
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def config(sim: Sim, store_url: str) -> dict:
    return {"upstreams": [{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5}], "models": [],
            "registry": [{"name": "chat", "versions": VERSIONS}], "routes": ROUTES,
            "resilience": {"sync_interval_s": 0.25}, "store": {"url": store_url}}


def targets(g: Gateway, key: str, n: int = 20) -> Counter:
    seen: Counter = Counter()
    for _ in range(n):
        r = g.post("/v1/chat/completions", key, json=BODY)
        assert r.status_code == 200, r.text
        seen[r.headers["x-sluice-route"].split("target=")[1]] += 1
    return seen


def shift(g: Gateway, v1: int, v2: int) -> httpx.Response:
    return g.admin("PUT", "/admin/routing/routes/chat/weights",
                   json={"targets": [{"target": "chat@v1", "weight": v1}, {"target": "chat@v2", "weight": v2}]})


def cli(g: Gateway, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": g.admin_key}
    return subprocess.run([sys.executable, "-m", "sluice", "routes", *args], env=env, capture_output=True, text=True,
                          timeout=30)


@pytest.fixture()
def one(sim, tmp_path):
    g = start_gateway(tmp_path, upstreams=config(sim, "")["upstreams"], models=[],
                      identities=[{"name": "app", "owner": "o", "models": ["*"]}],
                      extra={k: v for k, v in config(sim, f"sqlite:///{tmp_path}/sluice.db").items()
                             if k not in ("upstreams", "models")})
    yield g
    g.stop()


def test_a_weight_shift_is_immediate_and_one_rollback_command_restores_the_previous_weights(one):
    g, key = one, one.keys["app"]
    assert targets(g, key) == {"chat@v1": 20}
    assert shift(g, 0, 100).status_code == 200
    assert targets(g, key) == {"chat@v2": 20}  # the very next request
    done = cli(g, "rollback", "chat")
    assert done.returncode == 0, done.stderr
    assert targets(g, key) == {"chat@v1": 20}
    actions = [c["action"] for c in g.admin("GET", "/admin/changes?limit=10").json()["data"]]
    assert actions[:2] == ["route.rollback", "route.weights"]
    last = g.admin("GET", "/admin/changes?limit=1").json()["data"][0]
    assert last["detail"]["to"] == [{"target": "chat@v1", "weight": 100}]


def test_a_bad_weight_change_is_refused_with_an_openai_error_and_changes_nothing(one):
    g = one
    r = g.admin("PUT", "/admin/routing/routes/chat/weights", json={"targets": [{"target": "chat@v9", "weight": 1}]})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert g.admin("PUT", "/admin/routing/routes/nope/weights",
                   json={"targets": [{"target": "chat@v1", "weight": 1}]}).status_code == 404
    assert g.admin("POST", "/admin/routing/routes/chat/rollback").status_code == 400  # nothing to roll back to
    assert targets(g, g.keys["app"], 5) == {"chat@v1": 5}


def test_streams_in_flight_finish_while_weights_shift_under_them(sim, tmp_path):
    slow = Sim(tmp_path, **{"decode-ms": 20})
    g = start_gateway(tmp_path, upstreams=config(slow, "")["upstreams"], models=[],
                      identities=[{"name": "app", "owner": "o", "models": ["*"]}],
                      extra={"registry": [{"name": "chat", "versions": VERSIONS}], "routes": ROUTES})
    try:
        client = openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)
        finished: list[str] = []
        started = [threading.Event() for _ in range(8)]

        def one_stream(n: int) -> None:
            parts = []
            for c in client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                    max_tokens=100, stream=True, extra_body={}):
                started[n].set()
                if c.choices:
                    parts.append(c.choices[0].finish_reason)
            finished.append(parts[-1])

        threads = [threading.Thread(target=one_stream, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for n, s in enumerate(started):  # every stream has its first event: all eight are mid-stream
            assert s.wait(15), f"stream {n} has no first event after 15 s"
        assert not finished, "a stream ended before the weights shifted"
        for v1, v2 in ((50, 50), (0, 100), (100, 0)):
            assert shift(g, v1, v2).status_code == 200
        # 100 tokens at 20 ms: two seconds of decode, so every stream is still in flight after the last shift
        assert not finished, "a stream ended before the last shift: nothing was in flight under it"
        for t in threads:
            t.join(15)
        assert len(finished) == 8 and all(f in ("stop", "length") for f in finished)
        assert targets(g, g.keys["app"], 3) == {"chat@v1": 3}  # and the last shift serves new requests
    finally:
        g.stop()
        slow.stop()


def test_an_operator_change_survives_a_restart_and_the_file_does_not_overwrite_it(sim, tmp_path):
    ident = [{"name": "app", "owner": "o", "models": ["*"]}]
    extra = {k: v for k, v in config(sim, f"sqlite:///{tmp_path}/sluice.db").items() if k not in ("upstreams", "models")}
    g = start_gateway(tmp_path, upstreams=config(sim, "")["upstreams"], models=[], identities=ident, extra=extra)
    try:
        assert shift(g, 0, 100).status_code == 200
    finally:
        g.stop()
    g = start_gateway(tmp_path, upstreams=config(sim, "")["upstreams"], models=[], identities=ident, extra=extra)
    try:
        assert targets(g, g.keys["app"], 5) == {"chat@v2": 5}
        assert cli(g, "rollback", "chat").returncode == 0  # and what rollback restores survived too
        assert targets(g, g.keys["app"], 5) == {"chat@v1": 5}
    finally:
        g.stop()


def test_a_change_on_one_replica_reaches_the_other_within_a_second(sim, tmp_path_factory):
    url = asyncio.run(fresh_pg_database())
    admin_key = generate("prod", kind="admin")
    key = generate("dev")
    cfg = {**config(sim, url), "identities": [{"name": "app", "owner": "o", "models": ["*"], "keys": [key]}]}
    gws: list[Gateway] = []
    try:
        for name in "ab":
            gws.append(Gateway(tmp_path_factory.mktemp(f"routing-replica-{name}"), cfg, {"app": key}, admin_key))
        a, b = gws
        assert targets(b, key, 3) == {"chat@v1": 3}
        assert shift(a, 0, 100).status_code == 200
        t0 = time.monotonic()
        while targets(b, key, 1) != {"chat@v2": 1}:
            assert time.monotonic() - t0 < 1.0, "replica b still routes by the old weights after a second"
            time.sleep(0.02)
        assert targets(b, key, 10) == {"chat@v2": 10}
    finally:
        for g in gws:
            g.stop()
        asyncio.run(drop_pg_database(url))
