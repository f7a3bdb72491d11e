"""One upstream's bulkhead: a bound on its requests in flight and a bounded, timed line in front of it.

Each upstream (``upstreams[]``, over all its replicas) has its own: a backend that stalls holds at
most ``max_in_flight`` requests and ``max_queue`` waiting ones, each waiting no longer than
``queue_timeout``; past that its callers are answered at once (503 ``upstream_busy`` with
Retry-After) instead of holding the gateway's connections, memory and timers. Other upstreams never
wait on it. A place freed passes straight to the oldest waiter (first come, first served: the fair
share between callers is the model capacity's job, ``limits.fairness``, in front of this).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import Any

from ..core.config import Upstream
from ..core.errors import Unavailable


class Bulkhead:
    """At most ``limit`` requests in flight; up to ``max_queue`` more wait, each up to ``timeout`` seconds."""

    __slots__ = ("limit", "in_flight", "max_queue", "timeout", "waiters")

    def __init__(self, limit: int, max_queue: int = 0, timeout: float = 10.0) -> None:
        self.limit = limit
        self.in_flight = 0
        self.max_queue = max_queue
        self.timeout = timeout
        self.waiters: deque[asyncio.Future[None]] = deque()  # oldest first; Deployment reads it on its fast path

    @property
    def queued(self) -> int:
        return len(self.waiters)

    def enter(self) -> bool:
        """Take a place now if one is free and nobody waits for one (the common case); else False: ``wait``."""
        if self.in_flight < self.limit and not self.waiters:
            self.in_flight += 1
            return True
        return False

    async def wait(self) -> None:
        """Wait in line for a place; ``Unavailable`` (503) when the line is full or the wait outlasts ``timeout``."""
        if self.enter():
            return
        waiters = self.waiters
        if len(waiters) >= self.max_queue:
            raise _busy("This model's upstream has too many requests waiting; retry later.")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters.append(fut)
        try:
            await asyncio.wait_for(fut, self.timeout)
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.leave()  # the place came as we gave up: pass it on
            else:
                try:
                    waiters.remove(fut)
                except ValueError:
                    pass
            if isinstance(exc, asyncio.TimeoutError):
                raise _busy("This model's upstream stayed full for the whole queue deadline; retry later.") from None
            raise

    def leave(self) -> None:
        """Give a place back: to the oldest waiter, else free."""
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the place passes on: in_flight unchanged
                return
        self.in_flight -= 1


def _busy(message: str) -> Unavailable:
    return Unavailable(message, code="upstream_busy", retry_after=1.0)


def unbounded() -> Bulkhead:
    """A bulkhead that never makes anyone wait (a deployment built without one: benches, unit tests)."""
    return Bulkhead(1 << 62)


def bulkhead_for(u: Upstream) -> Bulkhead:
    """The bulkhead an upstream's config asks for: ``max_in_flight`` (default every replica's pool full),
    ``max_queue``, ``queue_timeout`` (default ``pool_timeout``)."""
    return Bulkhead(u.in_flight_bound, u.max_queue, u.queue_timeout or u.pool_timeout)


def bulkheads(deployments: Mapping[str, Any]) -> list[tuple[str, int, int, int]]:
    """(upstream, in flight, queued, bound) of every deployment's bulkhead, for the metrics."""
    return [(name, d.bulkhead.in_flight, d.bulkhead.queued, d.bulkhead.limit) for name, d in deployments.items()]
