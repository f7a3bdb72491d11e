"""An upstream that never ends an event cannot grow the gateway's memory: the relay holds an event
only until its blank line, and one larger than 4 MiB ends the stream with an in-band error that the
SDKs raise (or a 502 when nothing was sent yet), on both upstream clients."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from support import start_gateway


class EndlessEvent:
    """An upstream on its own thread: answers every chat completion with a 200 stream whose first
    event never ends, counting what it managed to send before the gateway hung up."""

    def __init__(self) -> None:
        self.sent = 0
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        ready.set()
        self.loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            start = b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
            writer.write(b"%x\r\n%s\r\n" % (len(start), start))
            piece = b"a" * 65536
            while self.sent < 64_000_000:
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
                self.sent += len(piece)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.mark.parametrize("client", ["native", "aiohttp"])
def test_an_event_that_never_ends_is_cut_at_4_mib_with_an_error_the_caller_sees(tmp_path, client):
    up = EndlessEvent()
    g = start_gateway(tmp_path, upstreams=[{"name": "u", "base_url": f"http://127.0.0.1:{up.port}/v1", "client": client}],
                      models=[{"name": "m", "upstream": "u"}],
                      identities=[{"name": "app", "owner": "o@example.com", "models": ["m"]}])
    try:
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        with httpx.stream("POST", g.v1 + "/chat/completions", json=body, timeout=30,
                          headers={"Authorization": f"Bearer {g.keys['app']}"}) as r:
            text = r.read().decode()
        if r.status_code == 200:  # the stream's head went out first: the error comes in-band
            events = [json.loads(e[len("data: "):]) for e in text.split("\n\n") if e.startswith("data: {")]
            assert events and events[-1]["error"]["code"] == "upstream_event_too_large", text[:300]
            assert "aaaa" not in text  # nothing of the unfinished event reached the caller
        else:
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_event_too_large"
        assert up.sent < 16_000_000, up.sent  # cut near 4 MiB, not read to the end
    finally:
        g.stop()
        up.stop()
