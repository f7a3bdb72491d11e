"""N requests of one API and kind to the bench gateway (bench/instructions.sh), 16 in flight (as wrk's c = 16:
the window is short, so periodic work weighs on each request as it does under load), the same work as
the wrk scripts (bench/*.lua and the yardstick's chat*.lua) send. Exits non-zero on any non-2xx.
API ``mcp``: N ``tools/call`` of ``files__get_weather`` on ``/mcp/files`` (bench/gateway-mcp.yaml), in one MCP
session opened first (initialize, notifications/initialized: not counted in N); a JSON-RPC error or a
tool error fails the run too. KIND and MODEL are not read for it.

Usage: python bench/requests.py API KIND MODEL N   (API: chat|messages|responses|mcp, KIND: plain|stream)
       python bench/requests.py pin PORT   (prints the hash sluice pins the server's get_weather by)
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


MCP_PATH = "/mcp/files"
MCP_VERSION = "2025-06-18"
MCP_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "files__get_weather", "arguments": {"city": "Paris"}}}


async def mcp_session(client: httpx.AsyncClient) -> dict[str, str]:
    """The headers of a new MCP session's requests (as the SDK's client sends them)."""
    accept = {"Accept": "application/json, text/event-stream"}
    r = await client.post(MCP_PATH, headers=accept, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": MCP_VERSION, "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}})
    if r.status_code != 200:
        sys.exit(f"mcp initialize: {r.status_code} {r.text[:200]}")
    headers = {**accept, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": MCP_VERSION}
    await client.post(MCP_PATH, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


def mcp_failed(r: httpx.Response) -> bool:
    if r.status_code >= 300:
        return True
    got = r.json()
    return "error" in got or bool(got["result"].get("isError"))


async def run(api: str, kind: str, model: str, n: int) -> None:
    headers = {"Authorization": f"Bearer {os.environ['BENCH_KEY']}"}
    left = [n]
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{os.environ.get('BENCH_PORT', '8080')}", headers=headers, timeout=600, limits=limits) as client:
        if api == "mcp":
            path, payload, extra, failed = MCP_PATH, MCP_CALL, await mcp_session(client), mcp_failed
        else:
            path, payload, extra, failed = PATHS[api], body(api, model, kind == "stream"), None, lambda r: r.status_code >= 300

        async def worker() -> None:
            while left[0] > 0:
                left[0] -= 1
                r = await client.post(path, json=payload, headers=extra)
                if failed(r):
                    sys.exit(f"{api} {kind}: {r.status_code} {r.text[:200]}")
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


async def pin(port: int) -> None:
    """The hash of ``get_weather``'s definition from the server's own listing (the SDK, once, at set-up)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from sluice.mcp.pins import definition_hash
    async with Client(streamable_http_client(f"http://127.0.0.1:{port}/mcp"), cache=None) as c:
        tools = (await c.list_tools()).tools
    print(definition_hash(next(t for t in tools if t.name == "get_weather")))


def main() -> None:
    if sys.argv[1] == "pin":
        asyncio.run(pin(int(sys.argv[2])))
        return
    api, kind, model, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    asyncio.run(run(api, kind, model, n))


if __name__ == "__main__":
    main()
