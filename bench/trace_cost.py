"""CPU cost of tracing in isolation: one sampled request's spans (request, six stages, one upstream
attempt) built and exported by the OpenTelemetry SDK to a collector that is not there, hot (in a
loop) and cold (20 sampled requests a second, as 1% of 2,000 req/s), and the sampling decision of
an unsampled request. Run: ``.venv/bin/python bench/trace_cost.py`` (about 20 s)."""

from __future__ import annotations

import asyncio
import time

from sluice.core.telemetry_config import Tracing
from sluice.telemetry.tracing import Tracer

tracer = Tracer(Tracing(endpoint="http://127.0.0.1:9/v1/traces", ratio=0.01))


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
    identity_name, team = "bench", "t"


class Ctx:
    target, decision, exchange, principal = _Target(), _Decision(), _Exchange(), _Principal()
    request, prompt_tokens, completion_tokens, status, error_code, stream = None, 5, 7, 200, None, False


SAMPLED = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}


async def one() -> None:
    tr = tracer.begin("chat.completions", SAMPLED)
    await tr.run(STAGES, Ctx)
    tr.attempt(Ctx)
    tr.answered(b'{"choices":[{"finish_reason":"stop"}]}')
    tr.finish(Ctx)


async def main() -> None:
    n = 2000
    t0 = time.process_time()
    for _ in range(n):
        await one()
    print(f"sampled request, hot loop: {(time.process_time() - t0) / n * 1e6:.0f} us CPU (all threads)")
    n = 200_000
    t0 = time.process_time()
    for _ in range(n):
        tracer.begin("chat.completions", {})
    print(f"unsampled request, the decision: {(time.process_time() - t0) / n * 1e6:.2f} us")
    for label, work in (("idle loop alone", False), ("20 sampled requests/s", True)):
        t0, w0, count = time.process_time(), time.time(), 0
        while time.time() - w0 < 8:
            for _ in range(2):
                if work:
                    await one()
                count += 1
            await asyncio.sleep(0.1)
        print(f"{label}: {(time.process_time() - t0) / 8 * 1000:.1f} ms CPU per second")


asyncio.run(main())
tracer.shutdown()
