"""A minimal OpenAI-shaped upstream over TLS (aiohttp in a thread), with a self-signed CA from trustme."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

import trustme
from aiohttp import web

from support import free_port

REPLY = {
    "id": "chatcmpl-tls", "object": "chat.completion", "created": 0, "model": "tls-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "over tls"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
}


class TLSUpstream:
    """Serves ``POST /v1/chat/completions`` on 127.0.0.1 with a certificate from its own CA; with
    ``client_ca``, only to callers showing a certificate of that CA (mTLS)."""

    def __init__(self, tmp: Path, client_ca: trustme.CA | None = None) -> None:
        ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(ctx)
        if client_ca is not None:
            client_ca.configure_trust(ctx)
            ctx.verify_mode = ssl.CERT_REQUIRED
        self.calls = 0
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}/v1"
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        ready = threading.Event()

        async def chat(_: web.Request) -> web.Response:
            self.calls += 1
            return web.json_response(REPLY)

        async def start() -> None:
            app = web.Application()
            app.router.add_post("/v1/chat/completions", chat)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=ctx).start()
            ready.set()

        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(start(), self._loop)
        assert ready.wait(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
