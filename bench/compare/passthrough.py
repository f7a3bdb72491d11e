"""Bare pass-through gateways, to choose the server and the upstream client by measurement.

Each variant reads the body, decodes it (JSON library under test), checks a bearer key with
one dict lookup, forwards the body to the canned upstream and returns its answer.

    python passthrough.py SERVER CLIENT JSON PORT
    SERVER: aiohttp | uvicorn | granian     CLIENT: aiohttp | httpx     JSON: msgspec | orjson | json
"""

from __future__ import annotations

import json as stdjson
import os
import sys

server, client_kind, json_kind, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
UPSTREAM = "http://127.0.0.1:18000/v1/chat/completions"
KEYS = {"Bearer " + os.environ.get("BENCH_KEY", "sk-bench"): "bench"}

if json_kind == "msgspec":
    import msgspec

    loads = msgspec.json.decode
elif json_kind == "orjson":
    import orjson

    loads = orjson.loads
else:
    loads = stdjson.loads


class Upstream:
    async def start(self) -> None:
        if client_kind == "aiohttp":
            import aiohttp

            self.s = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512))
        else:
            import httpx

            self.s = httpx.AsyncClient(limits=httpx.Limits(max_connections=512, max_keepalive_connections=512))

    async def post(self, body: bytes) -> bytes:
        if client_kind == "aiohttp":
            async with self.s.post(UPSTREAM, data=body, headers={"Content-Type": "application/json"}) as r:
                return await r.read()
        r = await self.s.post(UPSTREAM, content=body, headers={"Content-Type": "application/json"})
        return r.content


up = Upstream()

if server == "aiohttp":
    import uvloop
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") not in KEYS:
            return web.Response(status=401)
        body = await request.read()
        loads(body)
        return web.Response(body=await up.post(body), content_type="application/json")

    async def main() -> None:
        await up.start()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        import asyncio

        await asyncio.Event().wait()

    uvloop.run(main())
else:
    started = False

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        global started
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if not started:
            await up.start()
            started = True
        auth = dict(scope["headers"]).get(b"authorization", b"").decode()
        if auth not in KEYS:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        body = b""
        more = True
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        loads(body)
        out = await up.post(body)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    if server == "uvicorn":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, loop="uvloop", http="httptools", log_level="warning", access_log=False)
    else:
        from granian import Granian
        from granian.constants import Interfaces, Loops

        Granian(f"{__name__}:app", address="127.0.0.1", port=port, interface=Interfaces.ASGI, loop=Loops.uvloop,
                workers=1, log_enabled=False).serve()
