"""N sequential requests of one API and kind to the bench gateway (bench/instructions.sh), the same work
as the wrk scripts (bench/*.lua and the yardstick's chat*.lua) send. Exits non-zero on any non-2xx.

Usage: python bench/requests.py API KIND MODEL N   (API: chat|messages|responses, KIND: plain|stream)
"""

from __future__ import annotations

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


def main() -> None:
    api, kind, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    headers = {"Authorization": f"Bearer {os.environ['BENCH_KEY']}"}
    payload = body(api, model, kind == "stream")
    with httpx.Client(base_url="http://127.0.0.1:8080", headers=headers, timeout=600) as client:
        for _ in range(n):
            r = client.post(PATHS[api], json=payload)
            if r.status_code >= 300:
                sys.exit(f"{api} {kind}: {r.status_code} {r.text[:200]}")


if __name__ == "__main__":
    main()
