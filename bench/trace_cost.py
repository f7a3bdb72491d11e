"""CPU cost of tracing in isolation: one sampled request's spans (request, six stages, one upstream
attempt) built on the event loop and exported by the OpenTelemetry SDK's batch processor and OTLP/HTTP
exporter on its thread, to a live collector (``bench/otlp_sink.py``, started here on CPU 1) or with
``--dead-end`` to one that is not there; hot (batches of 50 requests, flushed), cold (20 sampled
requests a second, as 1% of 2,000 req/s), and the sampling decision of an unsampled request.
Run: ``.venv/bin/python bench/trace_cost.py [--dead-end]`` (about 30 s)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

from sluice.core.telemetry_config import Tracing
from sluice.telemetry.tracing import Tracer


class _Stage:
    async def __call__(self, ctx: object) -> None:
        return None


STAGES = [type(n, (_Stage,), {})() for n in ("Authenticate", "Decode", "Authorize", "Route", "Limit", "Admit")]


class _Target:
    name, upstream, version, model, upstream_model = "m@v", "sim", "v", "m", "m"


class _Route:
    name = "r"


class _Decision:
    attempts: list = []
    route = _Route()


class _Exchange:
    request_id = "req_bench"


class _Principal:
    identity_id, identity_name, team = "id-bench", "bench", "t"


class Ctx:
    target, decision, exchange, principal = _Target(), _Decision(), _Exchange(), _Principal()
    request, prompt_tokens, completion_tokens, status, error_code, stream = None, 5, 7, 200, None, False
    trace = None


SAMPLED = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}


async def one(tracer: Tracer) -> None:
    await tracer.run("chat.completions", tracer.sampling(SAMPLED), STAGES, Ctx)  # a caller's sampled flag, followed
    tr = Ctx.trace
    tr.attempt(Ctx)
    tr.answered(b'{"choices":[{"finish_reason":"stop"}]}')
    tr.finish(Ctx)


def sink() -> tuple[subprocess.Popen, int]:
    """The live collector on a free port, on CPU 1 where there is one (this process: CPU 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pin = ["taskset", "-c", "1"] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 else []
    proc = subprocess.Popen([*pin, sys.executable, os.path.join(os.path.dirname(__file__), "otlp_sink.py"), str(port)])
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=1)
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the OTLP sink did not start")


async def main(tracer: Tracer) -> None:
    flush = tracer.provider.force_flush
    await one(tracer)
    flush()
    build = total = 0.0
    n = 0
    for _ in range(40):  # batches of 50 requests (400 spans: under the queue's 2,048), each flushed
        t0, p0 = time.thread_time(), time.process_time()
        for _ in range(50):
            await one(tracer)
        build += time.thread_time() - t0
        flush()
        total += time.process_time() - p0
        n += 50
    print(f"sampled request, hot: {total / n * 1e6:.0f} us CPU: {build / n * 1e6:.0f} building spans on the loop, "
          f"{(total - build) / n * 1e6:.0f} encoding and posting them (exporter)")
    n = 200_000
    t0 = time.process_time()
    for _ in range(n):
        tracer.sampling({})
    print(f"unsampled request, the decision: {(time.process_time() - t0) / n * 1e6:.2f} us")
    idle = 0.0
    for label, work in (("idle loop alone", False), ("20 sampled requests/s", True)):
        t0, w0 = time.process_time(), time.time()
        while time.time() - w0 < 8:
            for _ in range(2):
                if work:
                    await one(tracer)
            await asyncio.sleep(0.1)
        flush()
        ms = (time.process_time() - t0) / 8 * 1000
        print(f"{label}: {ms:.1f} ms CPU per second" + (f" ({(ms - idle) / 20 * 1000:.0f} us per sampled request, cold)"
                                                         if work else ""))
        idle = ms


if __name__ == "__main__":
    dead = "--dead-end" in sys.argv
    proc, port = (None, 9) if dead else sink()
    # every caller's flag honoured: this measures the cost of a trace, not the allowance
    tracer = Tracer(Tracing(endpoint=f"http://127.0.0.1:{port}/v1/traces", ratio=0.01, timeout_s=2.0), lambda _: True)
    try:
        asyncio.run(main(tracer))
        tracer.shutdown()
        if proc is not None:
            got = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5))
            print(f"collector received {got['requests']} exports, {got['bytes']:,} bytes")
    finally:
        if proc is not None:
            proc.terminate()
