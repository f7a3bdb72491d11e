"""A tiny TCP load balancer for tests: round robin over backends, skipping one whose ``/readyz``
is not 200 (probed every 100 ms) and trying the next when a connect fails. What a Kubernetes
Service with a readiness probe, or any L4 balancer with health checks, does in front of sluice."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time

from support import free_port


class Balancer:
    """Listens on a free loopback port; ``backends`` are data-plane ports on 127.0.0.1."""

    def __init__(self, backends: list[int], probe_s: float = 0.1) -> None:
        self.port = free_port()
        self.backends = list(backends)
        self.ready = {p: False for p in backends}
        self._probe_s = probe_s
        self._turn = itertools.count()
        self.events: list[str] = []  # what went wrong, for a failing test's message
        self._live: set[asyncio.Task] = set()  # strong references: a pending pump must not be collected
        self.open: dict[int, tuple[int, float]] = {}  # relay id -> (backend port, start), while open
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="balancer", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_forever())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _probe(self, port: int) -> bool:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 0.5)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
            line = await asyncio.wait_for(reader.readline(), 1.0)
            return line.split(b" ")[1:2] == [b"200"]
        except (OSError, asyncio.TimeoutError, IndexError):
            return False
        finally:
            writer.transport.abort()

    async def _probe_forever(self) -> None:
        while True:
            results = await asyncio.gather(*[self._probe(p) for p in self.backends])
            self.ready = dict(zip(self.backends, results))
            await asyncio.sleep(self._probe_s)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._live.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._live.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = next(self._turn)
        order = self.backends[n % len(self.backends):] + self.backends[: n % len(self.backends)]
        for port in [p for p in order if self.ready.get(p)] or order:
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            except (OSError, asyncio.TimeoutError) as exc:
                self.events.append(f"connect {port}: {exc!r}")
                continue  # refused: that one is going away, try the next
            t0 = time.time()
            rid = id(writer)
            self.open[rid] = (port, t0)
            sent, answered = await asyncio.gather(_pump(reader, up_writer, self.events, f"c->{port}"),
                                                  _pump(up_reader, writer, self.events, f"{port}->c"))
            self.open.pop(rid, None)
            if not answered or time.time() - t0 > 5:
                self.events.append(f"{port} at {t0:.3f}: sent {sent}, answered {answered} in {time.time() - t0:.1f}s")
            return
        self.events.append("no backend")
        writer.transport.abort()

    def stuck(self, older_than: float = 5.0) -> list[str]:
        """Relays open longer than ``older_than`` seconds: which backend, since when."""
        now = time.time()
        return [f"{port} since {t0:.3f}" for port, t0 in list(self.open.values()) if now - t0 > older_than]

    def close(self) -> None:
        async def _close() -> None:
            self._probe_task.cancel()
            self._server.close()
            for task in list(self._live):
                task.cancel()
        asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, events: list[str], name: str) -> int:
    """Copy until EOF; the bytes copied."""
    n = 0
    try:
        while data := await src.read(65536):
            n += len(data)
            dst.write(data)
            await dst.drain()
    except (OSError, ConnectionError) as exc:
        events.append(f"{name}: {exc!r}")
    finally:
        try:
            dst.write_eof()
        except (OSError, RuntimeError):
            dst.transport.abort()
    return n
