"""Every usage record carries its cost from the price table (cached input at its own price), its
team, route and version; the ledger's totals by identity, team, model, route and day equal the
sum of the records exactly, in JSON, CSV and `sluice usage --by team --format csv`; the metrics
show callers, spend, time per output token, limit decisions, breakers and memory, with identities
past the configured count folded into `other`; each request is one masked JSON log line."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from decimal import Decimal

import httpx
import openai
import pytest

from support import start_gateway

PRICES = {"sim-small": {"input": 0.15, "output": 0.6, "cached_input": 0.075},
          "priced-too": {"input": 3, "output": 15}}
NANOS = {"sim-small": (150, 600, 75), "priced-too": (3000, 15000, 3000)}  # per token: input, output, cached


@pytest.fixture(scope="module")
def ledger_gw(sim, tmp_path_factory):
    g = start_gateway(
        tmp_path_factory.mktemp("ledger"),
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"},
                {"name": "priced-too", "upstream": "sim", "upstream_model": "sim-small"},
                {"name": "free", "upstream": "sim", "upstream_model": "sim-small"},
                {"name": "one-a-minute", "upstream": "sim", "upstream_model": "sim-small"}],
        identities=[{"name": "alice", "owner": "o", "team": "red", "models": ["*"]},
                    {"name": "bob", "owner": "o", "team": "blue", "models": ["*"]},
                    {"name": "carol", "owner": "o", "models": ["*"]}],
        extra={"teams": [{"name": "red", "owner": "o"}, {"name": "blue", "owner": "o"}],
               "prices": PRICES,
               "limits": {"rules": [{"name": "one-rpm", "match": {"model": "one-a-minute"}, "requests_per_minute": 1}]},
               "telemetry": {"max_identities": 2}})
    yield g
    g.stop()


TEAMS = {"alice": "red", "bob": "blue", "carol": None}
FIELDS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos")


def _sent(sent: list[dict], who: str, model: str | None, status: int, usage: object = None) -> None:
    """What the test itself knows of one request: who sent it, the model and route it named (a model
    the gateway does not know is no model and no route), its day, and the usage its reply carried."""
    prompt = getattr(usage, "prompt_tokens", 0) or 0
    completion = getattr(usage, "completion_tokens", 0) or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) or 0
    inp, out, cin = NANOS.get(model or "", (0, 0, 0))
    sent.append({"identity": who, "team": TEAMS[who], "model": model, "route": model, "status": status,
                 "day": time.strftime("%Y-%m-%d", time.gmtime()), "requests": 1, "errors": int(status >= 400),
                 "prompt_tokens": prompt, "completion_tokens": completion, "cached_tokens": cached,
                 "cost_nanos": (prompt - cached) * inp + cached * cin + completion * out})


def _mixed_run(g) -> tuple[float, list[dict]]:
    since = time.time() - 1
    sent: list[dict] = []
    prompt = "the same long prompt so the sim's prefix cache serves part of it the second time " * 8
    for who in ("alice", "bob", "carol"):
        client = openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0)
        for model in ("sim-small", "priced-too", "free"):
            r = client.chat.completions.create(model=model, max_tokens=5, messages=[{"role": "user", "content": prompt}])
            _sent(sent, who, model, 200, r.usage)
            chunks = list(client.chat.completions.create(model=model, max_tokens=9, stream=True,
                                                         stream_options={"include_usage": True},
                                                         messages=[{"role": "user", "content": prompt + who}]))
            assert chunks[-1].usage is not None, "the stream's last chunk carries its usage"
            _sent(sent, who, model, 200, chunks[-1].usage)
        r = g.post("/v1/chat/completions", g.keys[who], json={"model": "nope", "messages": []})
        assert r.status_code in (400, 404)
        _sent(sent, who, None, r.status_code)
    key = g.keys["alice"]
    body = {"model": "one-a-minute", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]}
    r = g.post("/v1/chat/completions", key, json=body)
    assert r.status_code == 200
    _sent(sent, "alice", "one-a-minute", 200, openai.types.CompletionUsage(**r.json()["usage"]))
    assert g.post("/v1/chat/completions", key, json=body).status_code == 429
    _sent(sent, "alice", "one-a-minute", 429)
    return since, sent


@pytest.fixture(scope="module")
def run(ledger_gw):
    since, sent = _mixed_run(ledger_gw)
    expected = 3 * 7 + 2
    assert len(sent) == expected
    deadline = time.monotonic() + 20
    while True:
        rows = ledger_gw.admin("GET", f"/admin/usage?since={since}&limit=10000").json()["data"]
        if len(rows) >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(rows) == expected
    return since, rows, sent


def test_each_record_carries_its_cost_team_route_and_version(ledger_gw, run):
    _, rows, _ = run
    assert any(r["cached_tokens"] > 0 for r in rows), "the sim's prefix cache should have served some prompt tokens"
    ids = {i["name"]: i for i in ledger_gw.admin("GET", "/admin/identities").json()["data"]}
    team_of = {i["id"]: i["team"] for i in ids.values()}
    for r in rows:
        inp, out, cin = NANOS.get(r["model"], (0, 0, 0))
        want = (r["prompt_tokens"] - r["cached_tokens"]) * inp + r["cached_tokens"] * cin + r["completion_tokens"] * out
        assert r["cost_nanos"] == want, r
        assert r["team"] == team_of[r["identity_id"]]
        if r["status"] == 200:
            assert r["route"] and r["version"] and r["upstream"] == "sim"
    assert sum(r["cost_nanos"] for r in rows if r["model"] == "free") == 0
    assert sum(r["cost_nanos"] for r in rows if r["model"] == "priced-too") > 0


@pytest.mark.parametrize("by", ["identity", "team", "model", "route", "day"])
def test_totals_by_every_dimension_equal_the_sum_of_the_records(ledger_gw, run, by):
    since, rows, sent = run
    until = time.time() + 1
    rep = ledger_gw.admin("GET", f"/admin/usage/summary?by={by}&since={since}&until={until}").json()
    groups, totals = rep["data"], rep["totals"]
    # every group equals the sums of what this test sent and was answered, grouped by the test itself
    ids = {i["name"]: i["id"] for i in ledger_gw.admin("GET", "/admin/identities").json()["data"]}
    want: dict[object, dict[str, int]] = {}
    for s in sent:
        key = ids[s["identity"]] if by == "identity" else s[by]
        acc = want.setdefault(key, dict.fromkeys(FIELDS, 0))
        for field in FIELDS:
            acc[field] += s[field]
    got = {g["key"]: {f: g[f] for f in FIELDS} for g in groups}
    assert len(groups) == len(got), "a key appears in two groups"
    assert any(w["cached_tokens"] for w in want.values()), "the cached price should be in the sums"
    assert got == want
    for field in FIELDS:
        assert totals[field] == sum(w[field] for w in want.values()), field
    # and the same sums hold over the ledger's own records
    for field in ("requests", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos"):
        want_rows = len(rows) if field == "requests" else sum(r[field] for r in rows)
        assert totals[field] == want_rows, field
    assert totals["errors"] == sum(1 for r in rows if r["status"] >= 400)
    if by == "team":
        assert want["red"]["cost_nanos"] > 0 and want["blue"]["cost_nanos"] > 0
    if by == "day":
        assert all(re.fullmatch(r"\d{4}-\d{2}-\d{2}", g["key"]) for g in groups)


def test_the_cli_prints_the_team_report_as_csv_with_an_exact_total(ledger_gw, run):
    since, rows, _ = run
    env = {**os.environ, "SLUICE_ADMIN_URL": ledger_gw.admin_url, "SLUICE_ADMIN_KEY": ledger_gw.admin_key}
    out = subprocess.run([sys.executable, "-m", "sluice", "usage", "--by", "team", "--format", "csv",
                          "--since", str(since)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert table[-1]["team"] == "TOTAL"
    total = sum(r["cost_nanos"] for r in rows)
    assert int(table[-1]["cost_nanos"]) == total
    # money as a plain decimal, exact, without trailing zeros (never 0E-9)
    assert Decimal(table[-1]["cost"]) == Decimal(total) / 10**9 and re.fullmatch(r"\d+(\.\d*[1-9])?", table[-1]["cost"])
    assert sum(int(t["cost_nanos"]) for t in table[:-1]) == total
    assert {t["team"] for t in table[:-1]} == {"red", "blue", "(no team)"}  # the no-team group is named


def test_bad_report_queries_are_400_not_500(ledger_gw):
    for q in ("by=colour", "since=nan", "until=inf", "format=xml", "since=abc"):
        r = ledger_gw.admin("GET", f"/admin/usage/summary?{q}")
        assert r.status_code == 400, (q, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"


def test_metrics_by_caller_spend_tpot_limits_breakers_and_memory(ledger_gw, run):
    text = httpx.get(ledger_gw.admin_url + "/metrics").text
    assert re.search(r'sluice_caller_requests_total\{identity="[^"]+",model="sim-small",route="[^"]+",'
                     r'status="200",team="red",version="[^"]+"\} [1-9]', text)
    # three identities, max_identities 2: the third folds into "other"
    idents = set(re.findall(r'sluice_caller_requests_total\{identity="([^"]*)"', text))
    assert "other" in idents and len(idents - {"other", ""}) == 2
    spend = {m[0]: float(m[1]) for m in re.findall(r'sluice_spend_total\{model="priced-too",team="(\w*)"\} (\S+)', text)}
    assert spend["red"] > 0 and spend["blue"] > 0
    assert re.search(r'sluice_time_per_output_token_seconds_count\{model="sim-small"\} [1-9]', text)
    assert re.search(r'sluice_limit_decisions_total\{decision="throttled",limit="one-rpm"\} 1\.0', text)
    assert re.search(r'sluice_limit_decisions_total\{decision="allowed",limit=""\} [1-9]', text)
    assert re.search(r'sluice_breaker_state\{state="closed",target="[^"]+",upstream="sim"\} 1\.0', text)
    assert 'sluice_upstream_healthy{upstream="sim"} 1.0' in text
    assert re.search(r"process_resident_memory_bytes [1-9]", text)
    assert "sluice_usage_pending_records" in text


def test_one_masked_json_log_line_per_request(ledger_gw, run):
    _, rows, _ = run
    lines = [json.loads(x) for x in ledger_gw.log().splitlines() if '"sluice.request"' in x]
    by_id = {x["request_id"]: x for x in lines}
    for r in rows:
        line = by_id[r["request_id"]]
        assert line["status"] == r["status"] and line["identity"] == r["identity_id"]
        assert line["prompt_tokens"] == r["prompt_tokens"] and line["completion_tokens"] == r["completion_tokens"]
        assert {"route", "target", "latency_ms", "level", "ts"} <= set(line)
    assert not any(k in ledger_gw.log() for k in ledger_gw.keys.values())


def test_the_grafana_dashboard_queries_only_metrics_sluice_exports(ledger_gw, run):
    from pathlib import Path

    doc = json.loads((Path(__file__).parents[2] / "deploy" / "grafana" / "sluice.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 12
    text = httpx.get(ledger_gw.admin_url + "/metrics").text
    exported = set(re.findall(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", text, re.M))
    functions = {"sum", "by", "rate", "increase", "histogram_quantile", "topk", "le", "model", "status", "team",
                 "direction", "identity", "decision", "limit", "kind", "upstream", "state", "open"}
    used = {name for e in exprs for name in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", re.sub(r'"[^"]*"|\[\w+\]', "", e))
            if name not in functions and not re.fullmatch(r"\d.*", name)}
    assert used and used <= exported, used - exported
    titles = " ".join(p["title"].lower() for p in doc["panels"])
    for panel in ("request rate", "latency", "errors", "tokens by team", "spend", "top identities", "limit",
                  "upstream health", "control-plane changes"):
        assert panel in titles


def test_the_request_log_masks_what_looks_like_a_credential():
    from sluice.core.types import UsageRecord
    from sluice.telemetry.fold import RecordFold
    from sluice.telemetry.logging import SecretMasker
    from sluice.telemetry.metrics import Metrics

    import logging

    logging.getLogger("sluice.request").setLevel(logging.INFO)  # as `logging.level: info` sets it
    out = io.StringIO()
    fold = RecordFold(Metrics(), None, masker=SecretMasker(["configured-secret-value"]), stream=out)
    fold([UsageRecord(request_id="r1", ts=time.time(), identity_id="i", key_id=None, endpoint="chat.completions",
                      model="m", upstream="u", status=502, error_code="sk-live0123456789abcdef",
                      team="configured-secret-value")])
    line = json.loads(out.getvalue())
    assert line["error"] == "***" and line["team"] == "***" and line["request_id"] == "r1" and line["status"] == 502
