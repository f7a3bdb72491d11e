"""Shared setup of the policy tests: a chat model with two versions, operators, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter

import httpx

from support import Gateway, Sim

VERSIONS = [{"version": "v1", "upstream": "sim", "upstream_model": "sim-small", "approved": True},
            {"version": "v2", "upstream": "sim", "upstream_model": "sim-small", "approved": True}]
ROUTES = [{"name": "chat", "match": {"models": ["chat"]}, "targets": [{"target": "chat@v1", "weight": 100}]}]
BODY = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
POLICY_HEADER = "x-sluice-policy"


def config(sim: Sim, store_url: str, **extra: object) -> dict:
    return {"upstreams": [{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5}], "models": [],
            "registry": [{"name": "chat", "versions": VERSIONS}], "routes": ROUTES,
            "store": {"url": store_url}, "identity": {"poll_interval_s": 0.25}, **extra}


def chat(g: Gateway, key: str) -> httpx.Response:
    return g.post("/v1/chat/completions", key, json=BODY)


def target_of(r: httpx.Response) -> str:
    return r.headers["x-sluice-route"].split("target=")[1]


def targets(g: Gateway, key: str, n: int = 10) -> Counter:
    seen: Counter = Counter()
    for _ in range(n):
        r = chat(g, key)
        assert r.status_code == 200, r.text
        seen[target_of(r)] += 1
    return seen


def operator(g: Gateway, name: str, roles: list[str] | None = None) -> str:
    """A second principal: an identity with the operator role and a control-plane key."""
    ident = g.admin("POST", "/admin/identities", json={"name": f"{name}-{time.time_ns() % 10**9}", "owner": "ops@example.com",
                                                       "roles": roles or ["operator"]})
    assert ident.status_code == 201, ident.text
    key = g.admin("POST", f"/admin/identities/{ident.json()['id']}/keys", json={"plane": "control"})
    assert key.status_code == 201, key.text
    return key.json()["key"]


def as_(g: Gateway, key: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, g.admin_url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=10)


def cli(g: Gateway, *args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SLUICE_ADMIN_URL": g.admin_url, "SLUICE_ADMIN_KEY": key or g.admin_key}
    return subprocess.run([sys.executable, "-m", "sluice", *args], env=env, capture_output=True, text=True, timeout=60)
