"""Helpers shared by the scale-out tests: Redis, usage counts, worker pids, driving load."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from test_limits import require_redis

CHAT = {"model": "sim-small", "messages": [{"role": "user", "content": "say something"}], "max_tokens": 4}


def redis_prefix() -> str:
    """A Redis key prefix no other test (or helper) shares; fails in CI if Redis is down."""
    require_redis()
    return f"so{uuid.uuid4().hex[:10]}:"


def sqlite_usage(db: Path, where: str = "1=1") -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute(f"SELECT count(*) FROM usage WHERE {where}").fetchone()[0]


def worker_pids(log: str) -> dict[int, list[int]]:
    """Every pid each worker index had, in order, from the supervisor's log."""
    out: dict[int, list[int]] = {}
    for index, pid in re.findall(r"worker (\d+) started \(pid (\d+)\)", log):
        out.setdefault(int(index), []).append(int(pid))
    return out


def poll(what: Callable[[], object], within: float, why: str) -> object:
    """Call ``what`` until it returns something truthy; fail with ``why`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        got = what()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(why)
        time.sleep(0.05)


async def burst(urls: list[str], key: str, n: int, body: dict | None = None, fresh: bool = True) -> list[httpx.Response]:
    """``n`` chat completions at once, spread over ``urls``; each on a new connection if ``fresh``
    (so SO_REUSEPORT spreads them over workers)."""
    limits = httpx.Limits(max_keepalive_connections=0) if fresh else httpx.Limits()
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        return list(await asyncio.gather(*[
            c.post(urls[i % len(urls)] + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json=body or CHAT) for i in range(n)]))


def boot_prefixes(responses: list[httpx.Response]) -> set[str]:
    """Which processes answered: a request id is ``req_`` + 16 hex chars of the process's boot + a counter."""
    return {r.headers["x-request-id"][4:20] for r in responses}


class Load:
    """Chat completions in a loop from a few threads; counts successes and failures."""

    def __init__(self, url: str, key: str, threads: int = 4) -> None:
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url, key), daemon=True) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, url: str, key: str) -> None:
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as c:
            while not self._stop.is_set():
                try:
                    r = c.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=CHAT)
                    ok, why = r.status_code == 200, f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, why = False, f"{time.time():.3f} {exc!r}"
                with self._lock:
                    if ok:
                        self.ok += 1
                    else:
                        self.failed.append(why)
                time.sleep(0.005)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
