"""A dead database must not hang requests or hide behind a green health check: the data
plane keeps serving from memory, readiness turns red quickly, the control plane answers
503, and usage recorded during the outage is written once the database is back."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import asyncpg
import httpx
import pytest

from pg_databases import drop_pg_database, fresh_pg_database
from support import free_port, start_gateway

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


class Proxy:
    """A TCP proxy to Postgres that the test can cut (listener and live connections) and restore."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept(); close alone does not
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for s in self._socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self._socks.clear()


@pytest.fixture()
def rig(sim, tmp_path):
    url = asyncio.run(fresh_pg_database())
    proxy = Proxy(("127.0.0.1", 5432))
    proxy.start()
    name = url.rsplit("/", 1)[1]
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}],
                      identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                      extra={"store": {"url": f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}"},
                             "usage": {"flush_interval": 0.2}})
    yield g, proxy, url
    g.stop()
    proxy.stop()
    asyncio.run(drop_pg_database(url))


def _count_ok(url: str) -> int:
    async def go() -> int:
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetchval("select count(*) from usage where status = 200")
        finally:
            await conn.close()
    return asyncio.run(go())


def test_database_outage_is_visible_bounded_and_loses_no_usage(rig):
    g, proxy, url = rig
    key = g.keys["a"]
    assert g.post("/v1/chat/completions", key, json=CHAT).status_code == 200
    proxy.stop()
    t_cut = time.monotonic()

    served = 0
    for _ in range(20):
        t0 = time.monotonic()
        r = g.post("/v1/chat/completions", key, json=CHAT)
        assert r.status_code == 200 and time.monotonic() - t0 < 1.0
        served += 1

    red = None
    while time.monotonic() - t_cut < 8:
        t0 = time.monotonic()
        r = httpx.get(g.admin_url + "/readyz", timeout=10)
        assert time.monotonic() - t0 < 2.5, "readiness must answer quickly even when the store hangs"
        if r.status_code == 503:
            red = time.monotonic() - t_cut
            break
        time.sleep(0.2)
    assert red is not None and red < 5, f"readiness stayed green {red}"
    assert httpx.get(g.admin_url + "/healthz").status_code == 200

    t0 = time.monotonic()
    r = g.admin("GET", "/admin/identities")
    assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
    assert "Retry-After" in r.headers and time.monotonic() - t0 < 8

    proxy.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and httpx.get(g.admin_url + "/readyz", timeout=10).status_code != 200:
        time.sleep(0.2)
    assert httpx.get(g.admin_url + "/readyz").status_code == 200
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _count_ok(url) < served + 1:
        time.sleep(0.2)
    assert _count_ok(url) >= served + 1  # the request before the cut and every one during it
