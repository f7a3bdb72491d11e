"""Verified model supply (issue 28): a version's digest is checked against what its backends report, before it
takes traffic and at every health check; a replica serving other weights takes none of the version's requests,
and is readmitted when it serves the approved digest again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from sluice.core.config import parse
from sluice.core.errors import ConfigError
from support import LoopbackServer, QuietHandler, Sim, start_gateway

APPROVED = "sha256:" + "a1" * 32
OTHER = "sha256:" + "b2" * 32
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
IDENTS = [{"name": "app", "owner": "o", "models": ["*"]}]


def wait_for(what: str, ok: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def digest_state(g, target: str, replica: str, state: str) -> bool:
    text = httpx.get(g.admin_url + "/metrics", timeout=5).text
    return re.search(rf'sluice_model_digest_state\{{replica="{re.escape(replica)}",state="{state}",'
                     rf'target="{re.escape(target)}"\}} 1\.0', text) is not None


def changes(g, action: str) -> list[dict]:
    return [c for c in g.admin("GET", "/admin/changes?limit=200").json()["data"] if c["action"] == action]


def verify_cli(g, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": g.admin_key, "COLUMNS": "250"}
    return subprocess.run([sys.executable, "-m", "sluice", "registry", "verify", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def test_a_sim_serving_another_digest_takes_no_traffic_until_it_serves_the_approved_one_again(tmp_path):
    stable, canary = Sim(tmp_path), Sim(tmp_path, digest=OTHER)
    g = start_gateway(
        tmp_path, models=[], identities=IDENTS,
        upstreams=[{"name": "stable", "base_url": stable.url + "/v1"},
                   {"name": "canary", "base_url": canary.url + "/v1",
                    "digest_probe": {"path": "/v1/models", "field": "data[id={model}].digest"}}],
        extra={"registry": [{"name": "m", "versions": [
                   {"version": "v1", "upstream": "stable", "upstream_model": "sim-small", "approved": True},
                   {"version": "v2", "upstream": "canary", "upstream_model": "sim-small", "approved": True,
                    "digest": APPROVED}]}],
               "routes": [{"name": "r", "match": {"models": ["m"]}, "targets": [{"target": "m@v2"}],
                           "fallbacks": ["m@v1"]},
                          {"name": "solo", "match": {"models": ["solo"]}, "targets": [{"target": "m@v2"}]}],
               "resilience": {"health_interval_s": 0.2}})
    try:
        # checked before the listeners opened: not one request reaches the unapproved weights
        for _ in range(5):
            r = g.post("/v1/chat/completions", g.keys["app"], json=BODY)
            assert r.status_code == 200 and r.headers["x-sluice-route"] == "r; target=m@v1", r.text
        # a route with nowhere else to go answers 503 rather than send the request to them
        alone = g.post("/v1/chat/completions", g.keys["app"], json={**BODY, "model": "solo"})
        assert alone.status_code == 503 and alone.json()["error"]["code"] == "no_healthy_target", alone.text
        assert canary.stats()["chat_requests"] == 0
        why = g.admin("GET", f"/admin/routes/decisions/{r.headers['x-request-id']}").json()
        assert why["excluded"]["m@v2"] == f"digest mismatch: the backend serves {OTHER}, approved {APPROVED}"
        assert digest_state(g, "m@v2", "canary/0", "mismatch")
        metrics = httpx.get(g.admin_url + "/metrics", timeout=5).text
        assert 'sluice_breaker_state{state="open",target="m@v2",upstream="canary"} 1.0' in metrics
        [entry] = changes(g, "registry.digest_mismatch")
        assert entry["target"] == "m@v2"
        assert entry["detail"]["replica"] == "canary/0" and entry["detail"]["reported"] == OTHER

        out = verify_cli(g)
        assert out.returncode == 1, out.stderr  # a replica is not verified
        assert re.search(r"m@v2\s+canary/0\s+mismatch", out.stdout), out.stdout
        assert re.search(r"m@v1\s+stable/0\s+no_digest", out.stdout), out.stdout
        rows = {row["target"]: row for row in json.loads(verify_cli(g, "-o", "json").stdout)["data"]}
        assert rows["m@v2"]["approved"] == APPROVED and rows["m@v2"]["reported"] == OTHER
        assert rows["m@v2"]["checked_at"] > time.time() - 60

        # a redeploy with the approved weights on the same address: readmitted by the next checks
        canary.stop()
        canary = Sim(tmp_path, port=canary.port, digest=APPROVED)
        wait_for("the approved digest verified", lambda: digest_state(g, "m@v2", "canary/0", "verified"))
        for _ in range(5):
            r = g.post("/v1/chat/completions", g.keys["app"], json=BODY)
            assert r.status_code == 200 and r.headers["x-sluice-route"] == "r; target=m@v2", r.text
        assert g.post("/v1/chat/completions", g.keys["app"], json={**BODY, "model": "solo"}).status_code == 200
        assert canary.stats()["chat_requests"] == 6
        [entry] = changes(g, "registry.digest_readmitted")
        assert entry["target"] == "m@v2" and entry["detail"]["reported"] == APPROVED
        assert len(changes(g, "registry.digest_mismatch")) == 1  # one entry per change of state, not per check
        assert verify_cli(g).returncode == 0
    finally:
        g.stop()
        stable.stop()
        canary.stop()


class FakeOllama:
    """An Ollama-shaped backend: ``GET /api/tags`` lists ``llama3:latest`` with this server's digest (hex, no
    prefix, as Ollama writes it); chat completions answer a fixed reply and are counted."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        self.chats = 0
        fake = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/api/tags":  # chunked, as Ollama's Go server sends a list past 4 KiB
                    body = json.dumps({"models": [
                        {"name": "mistral:latest", "model": "mistral:latest", "digest": "f" * 64},
                        {"name": "llama3:latest", "model": "llama3:latest", "digest": fake.digest,
                         "size": 4661224676, "details": {"format": "gguf", "family": "llama"}}]}).encode()
                    self.protocol_version = "HTTP/1.1"
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    for piece in (body[:40], body[40:]):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                else:  # /v1/models: the health check
                    self.send_body(b'{"object": "list", "data": []}')

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake.chats += 1
                self.send_body(json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "llama3",
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode())

        self._http = LoopbackServer(Handler)
        self.url = self._http.url

    def stop(self) -> None:
        self._http.stop()


def test_ollama_replicas_are_checked_by_their_tags_each_on_its_own(sim, tmp_path):
    approved = APPROVED.removeprefix("sha256:")
    a, b = FakeOllama(approved), FakeOllama(approved)
    g = start_gateway(
        tmp_path, models=[], identities=IDENTS,
        upstreams=[{"name": "ollama", "base_url": a.url + "/v1", "replicas": [b.url + "/v1"], "digest_probe": "ollama"},
                   {"name": "sim", "base_url": sim.url + "/v1"}],
        extra={"registry": [{"name": "m", "versions": [
                   {"version": "local", "upstream": "ollama", "upstream_model": "llama3", "approved": True,
                    "digest": APPROVED.upper().replace("SHA256:", "sha256:")},
                   {"version": "sim", "upstream": "sim", "upstream_model": "sim-small", "approved": True}]}],
               "routes": [{"name": "r", "match": {"models": ["m"]}, "targets": [{"target": "m@local"}],
                           "fallbacks": ["m@sim"]}],
               "resilience": {"health_interval_s": 0.2}})

    def send(n: int, target: str) -> None:
        for _ in range(n):
            r = g.post("/v1/chat/completions", g.keys["app"], json=BODY)
            assert r.status_code == 200 and r.headers["x-sluice-route"] == f"r; target={target}", r.text

    try:
        send(6, "m@local")
        assert a.chats >= 1 and b.chats >= 1 and a.chats + b.chats == 6  # both verified: both serve

        b.digest = OTHER.removeprefix("sha256:")  # one replica now serves other weights: only the other one serves
        wait_for("replica 1 found in mismatch", lambda: digest_state(g, "m@local", "ollama/1", "mismatch"))
        before = b.chats
        send(6, "m@local")
        assert b.chats == before

        a.digest = b.digest  # none serves the approved weights: the version is held, the route falls back
        wait_for("replica 0 found in mismatch", lambda: digest_state(g, "m@local", "ollama/0", "mismatch"))
        before = a.chats, b.chats
        send(4, "m@sim")
        assert (a.chats, b.chats) == before
        assert {c["detail"]["replica"] for c in changes(g, "registry.digest_mismatch")} == {"ollama/0", "ollama/1"}

        a.digest = b.digest = approved
        wait_for("both readmitted", lambda: digest_state(g, "m@local", "ollama/0", "verified")
                 and digest_state(g, "m@local", "ollama/1", "verified"))
        send(6, "m@local")
        assert {c["detail"]["replica"] for c in changes(g, "registry.digest_readmitted")} == {"ollama/0", "ollama/1"}
    finally:
        g.stop()
        a.stop()
        b.stop()


def test_a_digest_on_an_upstream_without_a_probe_is_refused_at_start():
    raw = {"upstreams": [{"name": "u", "base_url": "http://127.0.0.1:9/v1"}],
           "registry": [{"name": "m", "versions": [{"version": "v1", "upstream": "u", "digest": APPROVED}]}]}
    with pytest.raises(ConfigError) as got:
        parse(raw)
    assert "has no digest_probe - at `$.registry[0].versions[0].digest`" in str(got.value)
