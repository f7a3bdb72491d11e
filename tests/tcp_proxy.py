"""A cuttable TCP proxy on loopback: tests put it in front of Postgres or Redis to simulate an
outage without touching the system services."""

from __future__ import annotations

import asyncio
import threading

from support import free_port


class TcpProxy:
    """A TCP proxy (to Postgres, Redis, ...) on a free loopback port, run by an asyncio loop in its own thread.

    ``stop()`` is a hard outage: the listener closes (new connections are refused) and every
    live connection is aborted. ``blackhole()`` is a silent one: live connections are aborted
    and new ones are accepted but never answered. ``start()`` restores forwarding.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._server: asyncio.base_events.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._swallow = False

    def _call(self, coro) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop(keep_listening=False))

    def blackhole(self) -> None:
        self._call(self._stop(keep_listening=True))

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        self._swallow = False
        self._abort_all()  # whatever the black hole held
        if self._server is None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self, keep_listening: bool) -> None:
        self._swallow = keep_listening
        server = None if keep_listening else self._server
        if server is not None:
            server.close()
            self._server = None
        self._abort_all()
        if server is not None:
            await server.wait_closed()

    def _abort_all(self) -> None:
        for w in list(self._live):
            w.transport.abort()
        self._live.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._live.add(writer)
        if self._swallow:
            await reader.read()  # held open and silent until the proxy aborts it
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            self._live.discard(writer)
            return
        self._live.add(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        self._live.discard(writer)
        self._live.discard(up_writer)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            dst.transport.abort()
