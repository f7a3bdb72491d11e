"""A tiny TCP load balancer for tests: round robin over backends, skipping one whose ``/readyz``
is not 200 (probed every 100 ms) and trying the next when a connect fails. What a Kubernetes
Service with a readiness probe, or any L4 balancer with health checks, does in front of sluice.
Plain threads and blocking sockets: one thread per direction of each relayed connection."""

from __future__ import annotations

import http.client
import itertools
import socket
import threading
import time


class Balancer:
    """Listens on a free loopback port; ``backends`` are data-plane ports on 127.0.0.1."""

    def __init__(self, backends: list[int], probe_s: float = 0.1) -> None:
        self.backends = list(backends)
        self.ready = {p: False for p in backends}
        self.events: list[str] = []  # what went wrong, for a failing test's message
        self.open: dict[int, tuple[int, float]] = {}  # relay id -> (backend port, start), while open
        self._probe_s = probe_s
        self._turn = itertools.count()
        self._closed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._probe_forever, name="balancer-probe", daemon=True).start()
        threading.Thread(target=self._accept_forever, name="balancer-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @staticmethod
    def _probe(port: int) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
        try:
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _probe_forever(self) -> None:
        while not self._closed.is_set():
            self.ready = {p: self._probe(p) for p in self.backends}
            time.sleep(self._probe_s)

    def _accept_forever(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _connect(self) -> tuple[socket.socket, int] | None:
        n = next(self._turn) % len(self.backends)
        order = self.backends[n:] + self.backends[:n]
        for port in [p for p in order if self.ready.get(p)] or order:
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=2.0), port
            except OSError as exc:
                self.events.append(f"connect {port}: {exc!r}")  # refused: going away, try the next
        return None

    def _relay(self, client: socket.socket) -> None:
        got = self._connect()
        if got is None:
            self.events.append("no backend")
            client.close()
            return
        upstream, port = got
        upstream.settimeout(None)
        rid, t0 = id(client), time.time()
        self.open[rid] = (port, t0)
        back = threading.Thread(target=_copy, args=(upstream, client), daemon=True)
        back.start()
        _copy(client, upstream)
        back.join()
        self.open.pop(rid, None)
        client.close()
        upstream.close()

    def stuck(self, older_than: float = 5.0) -> list[str]:
        """Relays open longer than ``older_than`` seconds: which backend, since when."""
        now = time.time()
        return [f"{port} since {t0:.3f}" for port, t0 in list(self.open.values()) if now - t0 > older_than]

    def close(self) -> None:
        self._closed.set()
        self._listener.close()


def _copy(src: socket.socket, dst: socket.socket) -> None:
    """Bytes from ``src`` to ``dst`` until EOF, then pass the EOF on (half-close)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass
