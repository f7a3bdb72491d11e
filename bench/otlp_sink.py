"""A live OTLP/HTTP trace collector for the benchmarks: answers every ``POST /v1/traces`` with 200
and an empty ``ExportTraceServiceResponse``, counting requests and bytes (``GET /stats``), never
decoding them, so it costs the gateway's CPU nothing but the exporter's own work.

Run: ``python bench/otlp_sink.py PORT`` (``bench/lib.sh`` starts it pinned to CPU 1 with
``start_collector``). ``--hang`` accepts connections and never answers (a collector that hangs).
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


def app() -> web.Application:
    """The sink: counts what it was sent and says OK."""
    stats = {"requests": 0, "bytes": 0}

    async def traces(request: web.Request) -> web.Response:
        stats["requests"] += 1
        stats["bytes"] += len(await request.read())
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def show(request: web.Request) -> web.Response:
        return web.json_response(stats)

    a = web.Application(client_max_size=64 << 20)
    a.router.add_post("/v1/traces", traces)
    a.router.add_get("/stats", show)
    return a


async def hang(port: int) -> None:
    """Accept connections and read them, never answer."""
    async def held(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    server = await asyncio.start_server(held, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 4318
    if "--hang" in sys.argv:
        asyncio.run(hang(port))
    else:
        web.run_app(app(), host="127.0.0.1", port=port, print=None, access_log=None)
