"""Traces: a tiny OTLP/HTTP collector started by the test receives one trace per sampled request,
with a span per pipeline stage and per upstream attempt (retry or fallback and why), GenAI
attributes and no prompt text; the caller's W3C traceparent is followed and propagated to the
upstream (the sim records what it got), but only once the caller has authenticated and within
its identity's allowance; unsampled requests export nothing; a collector that hangs costs spans,
never request time, memory or a slow shutdown."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import httpx
import openai
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from support import LoopbackServer, Sim, free_port, start_gateway

PROMPT = "a very private prompt that must never reach a span"
BODY = {"model": "sim-small", "max_tokens": 4, "messages": [{"role": "user", "content": PROMPT}]}
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "100"}


class Collector:
    """An OTLP/HTTP receiver: every span it was sent, decoded, with its raw bytes."""

    def __init__(self) -> None:
        self.spans: list = []
        self.raw = b""
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest()
                req.ParseFromString(data)
                with lock:
                    outer.raw += data
                    for rs in req.resource_spans:
                        for ss in rs.scope_spans:
                            outer.spans.extend(ss.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = LoopbackServer(Handler)
        self.url = self.server.url + "/v1/traces"

    def trace(self, trace_id: bytes, count: int, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [s for s in self.spans if s.trace_id == trace_id]
            if len(got) >= count:
                return got
            time.sleep(0.1)
        return [s for s in self.spans if s.trace_id == trace_id]


def attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = list(x.string_value for x in v.array_value.values) if kind == "array_value" else getattr(v, kind)
    return out


@pytest.fixture()
def collector():
    c = Collector()
    yield c
    c.server.stop()


def tracing_gateway(tmp_path, sim_url, collector, ratio=1.0, identities=("a",), tracing=None, **extra):
    return start_gateway(
        tmp_path, upstreams=[{"name": "sim", "base_url": sim_url + "/v1"}],
        models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[{"name": n, "owner": "o", "models": ["*"]} for n in identities],
        extra={"telemetry": {"tracing": {"endpoint": collector.url, "ratio": ratio, **(tracing or {})}}, **extra},
        env=FAST_EXPORT)


def sampled() -> tuple[str, dict[str, str]]:
    """A new trace id, and the headers of a caller asking for it to be sampled."""
    trace_id = secrets.token_hex(16)
    return trace_id, {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}


def test_a_callers_traceparent_is_followed_with_stage_and_upstream_spans_and_propagated(sim, tmp_path, collector):
    g = tracing_gateway(tmp_path, sim.url, collector, ratio=0.0)  # only callers' sampled traces
    try:
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        r = g.post("/v1/chat/completions", g.keys["a"], json=BODY,
                   headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        assert r.status_code == 200
        spans = collector.trace(bytes.fromhex(trace_id), 8)
        by_name = {s.name: s for s in spans}
        root = by_name["chat.completions"]
        assert root.parent_span_id.hex() == parent
        stages = {n for n in by_name if n.startswith("stage ")}
        assert {"stage authenticate", "stage decode", "stage authorize", "stage route", "stage limit"} <= stages
        upstream = by_name["upstream sim"]
        assert all(by_name[n].parent_span_id == root.span_id for n in stages | {"upstream sim"})
        # decided after authentication, the trace still covers it: the request starts with it, at its measured times
        auth, decode = by_name["stage authenticate"], by_name["stage decode"]
        assert root.start_time_unix_nano == auth.start_time_unix_nano < auth.end_time_unix_nano
        assert auth.end_time_unix_nano <= decode.start_time_unix_nano <= root.end_time_unix_nano
        a = attrs(root)
        assert a["gen_ai.request.model"] == "sim-small" and a["gen_ai.usage.output_tokens"] == 4
        assert a["gen_ai.usage.input_tokens"] > 0 and a["gen_ai.response.finish_reasons"] == ["length"]
        assert a["http.response.status_code"] == 200 and a["sluice.request_id"] == r.headers["x-request-id"]
        assert a["sluice.api"] == "chat"
        assert attrs(upstream)["sluice.target"] and attrs(upstream)["sluice.attempt"] == 1
        # the upstream got a traceparent naming the upstream span of this trace
        got = [tp for tp in sim.stats()["traceparents"] if trace_id in tp]
        assert got == [f"00-{trace_id}-{upstream.span_id.hex()}-01"]
        assert PROMPT.encode() not in collector.raw and b"private prompt" not in collector.raw
        assert g.keys["a"].encode() not in collector.raw

        # a caller that says "not sampled" is not traced, and nothing is built for it
        quiet = secrets.token_hex(16)
        assert g.post("/v1/chat/completions", g.keys["a"], json=BODY,
                      headers={"traceparent": f"00-{quiet}-{parent}-00"}).status_code == 200
        # nor is a request without one at ratio 0
        assert g.post("/v1/chat/completions", g.keys["a"], json=BODY).status_code == 200
        seen = len(collector.spans)
        time.sleep(1.0)
        assert len(collector.spans) == seen and not collector.trace(bytes.fromhex(quiet), 1, timeout=0.1)
    finally:
        g.stop()


def test_keyless_requests_never_start_a_trace_from_their_sampled_flag(sim, tmp_path, collector):
    g = tracing_gateway(tmp_path, sim.url, collector, ratio=0.0)  # only callers' sampled traces
    try:
        refused = []
        for i in range(30):  # no key, a wrong key, a malformed one: each asks for its trace to be sampled
            trace_id, headers = sampled()
            key = (None, "sk-not-a-key", "sld_dev_" + "x" * 36)[i % 3]
            assert g.post("/v1/chat/completions", key, json=BODY, headers=headers).status_code == 401
            refused.append(bytes.fromhex(trace_id))
        trace_id, headers = sampled()  # then one caller with a key: its trace is exported after theirs would be
        assert g.post("/v1/chat/completions", g.keys["a"], json=BODY, headers=headers).status_code == 200
        assert collector.trace(bytes.fromhex(trace_id), 8)
        assert {s.trace_id for s in collector.spans} == {bytes.fromhex(trace_id)}, "a keyless request was traced"
        assert not set(refused) & {s.trace_id for s in collector.spans}
    finally:
        g.stop()


def test_a_callers_sampled_flag_is_honoured_at_most_the_configured_rate_per_identity(sim, tmp_path, collector):
    g = tracing_gateway(tmp_path, sim.url, collector, ratio=0.0, identities=("a", "b"),
                        tracing={"caller_sampled_per_minute": 3})
    try:
        asked = []
        t0 = time.monotonic()
        for _ in range(10):
            trace_id, headers = sampled()
            assert g.post("/v1/chat/completions", g.keys["a"], json=BODY, headers=headers).status_code == 200
            asked.append(bytes.fromhex(trace_id))
        elapsed = time.monotonic() - t0
        other, headers = sampled()  # another identity has its own allowance
        assert g.post("/v1/chat/completions", g.keys["b"], json=BODY, headers=headers).status_code == 200
        assert collector.trace(bytes.fromhex(other), 8)  # exported after a's, so a's are all in by now
        followed = [t for t in asked if any(s.trace_id == t for s in collector.spans)]
        # three at once, then one per 20 s (a minute's allowance, refilled at the rate)
        assert 3 <= len(followed) <= 3 + int(elapsed // 20), (len(followed), elapsed)
        assert followed[:3] == asked[:3]  # the first ones, each a whole trace
        assert all(len(collector.trace(t, 8, timeout=1)) >= 8 for t in followed)
    finally:
        g.stop()


def test_every_request_is_one_trace_at_ratio_one_streams_included(sim, tmp_path, collector):
    g = tracing_gateway(tmp_path, sim.url, collector)
    try:
        client = openai.OpenAI(base_url=g.v1, api_key=g.keys["a"], max_retries=0)
        ids = []
        for i in range(3):
            ids.append(client.chat.completions.with_raw_response.create(**BODY).headers["x-request-id"])
            with client.chat.completions.with_streaming_response.create(**BODY, stream=True) as resp:
                ids.append(resp.headers["x-request-id"])
                list(resp.iter_lines())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            roots = [s for s in collector.spans if s.name == "chat.completions"]
            if len(roots) >= 6:
                break
            time.sleep(0.1)
        assert sorted(attrs(s)["sluice.request_id"] for s in roots) == sorted(ids)
        assert len({s.trace_id for s in roots}) == 6
        for root in roots:
            ups = [s for s in collector.spans if s.trace_id == root.trace_id and s.name == "upstream sim"]
            assert len(ups) == 1 and ups[0].end_time_unix_nano >= ups[0].start_time_unix_nano
        # a keyless request the ratio chose is traced, as a trace of its own: never in the one its caller named
        theirs, headers = sampled()
        r = g.post("/v1/chat/completions", None, json=BODY, headers=headers)
        assert r.status_code == 401
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            mine = [s for s in collector.spans if s.name == "chat.completions"
                    and attrs(s)["sluice.request_id"] == r.headers["x-request-id"]]
            if mine:
                break
            time.sleep(0.1)
        (root,) = mine
        assert root.trace_id != bytes.fromhex(theirs) and not root.parent_span_id
        (auth,) = [s for s in collector.trace(root.trace_id, 2) if s.name == "stage authenticate"]
        assert attrs(auth)["error.type"] == "missing_api_key" and attrs(root)["http.response.status_code"] == 401
    finally:
        g.stop()


def test_a_retry_and_a_fallback_are_attempt_spans_that_say_why(tmp_path, collector):
    flaky = Sim(tmp_path)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    g = start_gateway(
        tmp_path, models=[], identities=[{"name": "a", "owner": "o", "models": ["*"]}],
        upstreams=[{"name": "flaky", "base_url": flaky.url + "/v1"}, {"name": "dead", "base_url": dead, "connect_timeout": 0.5}],
        extra={"registry": [{"name": "m", "versions": [
                   {"version": "one", "upstream": "dead", "upstream_model": "sim-small", "approved": True},
                   {"version": "two", "upstream": "flaky", "upstream_model": "sim-small", "approved": True}]}],
               "routes": [{"name": "r", "targets": [{"target": "m@one"}], "fallbacks": ["m@two"], "retries": 1}],
               "resilience": {"backoff_ms": 0, "max_attempts": 4},
               "telemetry": {"tracing": {"endpoint": collector.url, "ratio": 1.0}}}, env=FAST_EXPORT)
    try:
        flaky.faults(error_status=500, error_count=1)
        trace_id = secrets.token_hex(16)
        r = g.post("/v1/chat/completions", g.keys["a"], json={**BODY, "model": "m"},
                   headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
        assert r.status_code == 200
        spans = collector.trace(bytes.fromhex(trace_id), 4 + 6)
        attempts = sorted((attrs(s) for s in spans if s.name.startswith("upstream ")), key=lambda a: a["sluice.attempt"])
        assert [a["sluice.target"] for a in attempts] == ["m@one", "m@one", "m@two", "m@two"]
        assert [a.get("sluice.attempt.kind") for a in attempts] == [None, "retry", "fallback", "retry"]
        assert attempts[1]["sluice.attempt.reason"] == attempts[0]["error.type"] != ""
        assert "error.type" not in attempts[3]
        # the sim saw the traceparent of the attempt that reached it, with this trace's id
        assert sum(trace_id in tp for tp in flaky.stats()["traceparents"]) == 2
    finally:
        g.stop()
        flaky.stop()


class HangingCollector:
    """Accepts connections and reads what it is sent, never answers (a collector that hangs)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1/traces"
        self.received = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        with conn:
            while chunk := conn.recv(65536):
                self.received += len(chunk)

    def stop(self) -> None:
        self.sock.close()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_a_collector_that_hangs_neither_slows_requests_nor_grows_memory_nor_holds_shutdown(sim, tmp_path):
    hung = HangingCollector()
    g = start_gateway(
        tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[{"name": "a", "owner": "o", "models": ["*"]}],
        extra={"telemetry": {"tracing": {"endpoint": hung.url, "ratio": 1.0, "timeout_s": 3.0, "max_queue_spans": 64}}},
        env=FAST_EXPORT)
    try:
        client = httpx.Client(base_url=g.url, headers={"Authorization": f"Bearer {g.keys['a']}"}, timeout=30,
                              limits=httpx.Limits(max_connections=8))

        def one(_: int) -> float:
            t0 = time.monotonic()
            assert client.post("/v1/chat/completions", json=BODY).status_code == 200
            return time.monotonic() - t0

        def burst(n: int) -> list[float]:
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(one, range(n)))

        burst(300)  # warm: pools, caches, and the exporter stuck on its first batch
        assert hung.received > 0  # it did try to export
        before = _rss_mib(g.proc.popen.pid)
        took = burst(1500)  # 12,000 spans, a queue of 64
        grown = _rss_mib(g.proc.popen.pid) - before
        took.sort()
        # each export waits 3 s for an answer that never comes: no request waits for one
        assert took[len(took) // 2] < 0.5 and took[-1] < 1.5, (took[len(took) // 2], took[-1])
        assert grown < 4.0, f"RSS grew {grown:.1f} MiB while spans had nowhere to go"
        t0 = time.monotonic()
        client.close()
        assert g.stop() == 0  # not killed by the harness after 15 s
        # the export timeout and a second (the SDK's own shutdown: one timeout per queued batch, 9 s here)
        assert time.monotonic() - t0 < 3.0 + 2.5
    finally:
        g.stop()
        hung.stop()
