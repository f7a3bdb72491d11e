"""What the in-flight count costs ``HttpUpstream.call_tool`` (issue 25 item 2: servers in the policy).

A removed or replaced server is closed once the requests on their way to it have ended, so each call counts
itself in and out. This times ``call_tool`` against a client that answers at once, as it was before the count
(``Before``) and as it is, best of many rounds (the machine is shared): the difference is the count's cost.

    PYTHONPATH=. .venv/bin/python bench/mcp_inflight.py
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sluice.core.mcp_config import McpServer
from sluice.mcp.upstreams import HttpUpstream

N, ROUNDS = 50_000, 40


class Instant:
    async def call_tool(self, name: str, arguments: dict[str, Any]) -> int:
        return 1


class Before(HttpUpstream):
    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        return await self.client.call_tool(name, arguments)


async def main() -> None:
    ups = {label: cls(McpServer(name="x", url="http://127.0.0.1:9/mcp"), 1 << 20)
           for label, cls in (("before", Before), ("with the count", HttpUpstream))}
    best = dict.fromkeys(ups, float("inf"))
    for up in ups.values():
        up.client = Instant()  # type: ignore[assignment]
    for _ in range(ROUNDS):
        for label, up in ups.items():
            t0 = time.perf_counter()
            for _ in range(N):
                await up.call_tool("t", {})
            best[label] = min(best[label], (time.perf_counter() - t0) / N)
    for label, s in best.items():
        print(f"{label:16s} {s * 1e9:6.0f} ns per call_tool (best of {ROUNDS} x {N})")


if __name__ == "__main__":
    asyncio.run(main())
