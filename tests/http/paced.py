"""A paced upstream that streams like a model: its head at once (or in one send with the first
token, or in a send of its own just before it), the first token after ``first_ms``, then one every
``every_ms``. Also the client that times a stream: when its head and its first token arrive.
Used by tests/http/test_stream_writes.py and bench/ttft.py."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(i: int) -> bytes:
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "paced",
             "choices": [{"index": 0, "delta": {"content": f"t{i} "}, "finish_reason": None}]}
    return _chunk(b"data: " + json.dumps(chunk).encode() + b"\n\n")


async def serve_paced(port: int, first_ms: float, every_ms: float, head: str = "at-once", tokens: int = 4) -> None:
    """``head``: ``at-once``, ``with-token`` or ``late``. Serves until cancelled."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                raw = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in raw.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if head == "at-once":
                    writer.write(HEAD)
                await asyncio.sleep(first_ms / 1000)
                if head == "late":  # the head alone, the first token in a send of its own
                    writer.write(HEAD)
                    await writer.drain()
                    await asyncio.sleep(0)
                for i in range(tokens):
                    if i:
                        await asyncio.sleep(every_ms / 1000)
                    writer.write((HEAD if head == "with-token" and i == 0 else b"") + _event(i))
                writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


class PacedUpstream:
    """``serve_paced`` on a thread of its own, for a test."""

    def __init__(self, port: int, first_ms: float = 150, every_ms: float = 40, head: str = "at-once") -> None:
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._task = self._loop.create_task(serve_paced(port, first_ms, every_ms, head))
            self._loop.call_soon(ready.set)
            try:
                self._loop.run_until_complete(self._task)
            except asyncio.CancelledError:
                pass

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._task.cancel)  # type: ignore[union-attr]
        self._thread.join(5)


def time_stream(port: int, key: str | None = None) -> tuple[float, float]:
    """Seconds from sending a streamed chat request to its head, and to its first token."""
    body = json.dumps({"model": "paced", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    auth = f"authorization: Bearer {key}\r\n".encode() if key else b""
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + auth
           + b"content-length: %d\r\n\r\n" % len(body) + body)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        s.sendall(req)
        seen, head_s, token_s = b"", 0.0, 0.0
        while not token_s:
            data = s.recv(65536)
            if not data:
                raise RuntimeError(f"closed before a token: {seen[:300]!r}")
            seen += data
            if not head_s and b"\r\n\r\n" in seen:
                head_s = time.perf_counter() - t0
            if b'"content"' in seen:
                token_s = time.perf_counter() - t0
        while not seen.endswith(b"0\r\n\r\n"):  # read the stream to its end
            data = s.recv(65536)
            if not data:
                break
            seen += data
    return head_s, token_s
