"""N requests of one API and kind to the bench gateway (bench/instructions.sh), 16 in flight (as wrk's c = 16:
the window is short, so periodic work weighs on each request as it does under load), the same work as
the wrk scripts (bench/*.lua and the yardstick's chat*.lua) send. Exits non-zero on any non-2xx.

Usage: python bench/requests.py API KIND MODEL N   (API: chat|messages|responses, KIND: plain|stream)
"""

from __future__ import annotations

import asyncio
import os
import sys

import httpx

PROMPT = "Say hello in one short sentence."
PATHS = {"chat": "/v1/chat/completions", "messages": "/v1/messages", "responses": "/v1/responses"}


def body(api: str, model: str, stream: bool) -> dict:
    if api == "responses":
        out = {"model": model, "store": False, "input": PROMPT, "max_output_tokens": 32}
    else:
        out = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 32}
    if stream:
        out["stream"] = True
    return out


CONCURRENCY = 16


async def run(api: str, kind: str, model: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {os.environ['BENCH_KEY']}"}
    payload = body(api, model, kind == "stream")
    left = [n]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url="http://127.0.0.1:8080", headers=headers, timeout=600, limits=limits) as client:
        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                r = await client.post(PATHS[api], json=payload)
                if r.status_code >= 300:
                    sys.exit(f"{api} {kind}: {r.status_code} {r.text[:200]}")
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


def main() -> None:
    api, kind, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    asyncio.run(run(api, kind, model, n))


if __name__ == "__main__":
    main()
