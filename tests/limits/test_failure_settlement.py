"""A request that was sent and never answered costs what it reserved; a failure known to come
before any upstream work refunds (issue 9, item 9)."""

from __future__ import annotations

import time

import pytest

from support import Sim, free_port, start_gateway

RULES = [{"name": "out", "per": ["identity", "model"], "output_tokens_per_minute": 100}]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("failsettle")
    s = Sim(tmp)
    g = start_gateway(
        tmp,
        upstreams=[{"name": "sim", "base_url": s.url + "/v1", "read_timeout": 0.5, "total_timeout": 5.0},
                   {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout": 1.0}],
        models=[{"name": m, "upstream": "sim", "upstream_model": "sim-small"} for m in ("m-slow", "m-bad")]
        + [{"name": "m-gone", "upstream": "dead"}],
        identities=[{"name": "a", "owner": "o", "models": ["*"]}],
        extra={"limits": {"rules": RULES}})
    yield g, s
    g.stop()
    s.stop()


def _chat(g, model: str, max_tokens: int = 60):
    return g.post("/v1/chat/completions", g.keys["a"],
                  json={"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hello"}]})


def _records(g, since: float, model: str) -> list[dict]:
    rows = g.admin("GET", f"/admin/usage?since={since}&limit=1000").json()["data"]
    return [r for r in rows if r["model"] == model]


def test_a_request_whose_upstream_times_out_is_charged_what_it_reserved(rig):
    g, s = rig
    since = time.time() - 1
    s.faults(delay_ms=1500)  # past the gateway's 0.5 s read timeout: sent, never answered
    try:
        r = _chat(g, "m-slow")
    finally:
        s.clear_faults()
    assert r.status_code == 504
    # 60 of the minute's 100 output tokens stay spent: another 60 does not fit
    assert _chat(g, "m-slow").status_code == 429
    [row] = [row for row in _records(g, since, "m-slow") if row["status"] == 504]
    assert row["usage_source"] == "reserved" and row["completion_tokens"] == 60 and row["prompt_tokens"] > 0


@pytest.mark.parametrize("model,fault,status", [("m-gone", None, 502), ("m-bad", {"error_status": 400}, 400)])
def test_a_failure_before_any_upstream_work_is_refunded(rig, model, fault, status):
    g, s = rig
    since = time.time() - 1
    if fault:
        s.faults(**fault)
    try:
        got = [_chat(g, model).status_code for _ in range(3)]  # 3 x 60 reserved: fits only if refunded
    finally:
        s.clear_faults()
    assert got == [status] * 3
    assert all(row["usage_source"] != "reserved" and row["completion_tokens"] == 0 for row in _records(g, since, model))


def test_a_stream_whose_upstream_never_answers_is_charged_what_it_reserved(rig):
    g, s = rig
    since = time.time() - 1
    s.faults(hang=True)  # accepted, never answered: the gateway's read timeout ends it
    try:
        r = g.post("/v1/chat/completions", g.keys["a"], json={
            "model": "m-bad", "max_tokens": 60, "stream": True, "messages": [{"role": "user", "content": "hello"}]})
    finally:
        s.clear_faults()
    assert r.status_code == 504
    [row] = [row for row in _records(g, since, "m-bad") if row["status"] == 504]
    assert row["usage_source"] == "reserved" and row["completion_tokens"] == 60
