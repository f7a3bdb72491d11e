"""Fair admission to a model's shared capacity: a virtual-token-counter scheduler.

When a model's configured concurrency is saturated, waiting requests are admitted by who
has been served the fewest tokens (each identity's counter is lifted to the smallest active
counter when it starts waiting, so idling earns no credit), not first come first served:
one heavy caller cannot starve the others. The queue is bounded and every wait has a
deadline; past them, 429 or 503. Requests of the ``batch`` class (Batch API lines) yield to all
others: they take a free slot only when nobody waits, queue apart, and get a released slot only
when no other request waits for it; they wait without a deadline (their batch's window is theirs). The bound is shared fairly too: a caller that finds the
queue full takes the place of the newest waiter of the caller holding the most places, as
long as that caller holds at least two more, so each caller can always queue up to its
fair share (``queue`` divided by the callers waiting), whoever filled the queue first.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ..core.config import Capacity
from ..core.errors import RateLimited, Unavailable


class Slot:
    """One admitted request's hold on the capacity, released once."""

    __slots__ = ("_gate", "identity", "charged", "released")

    def __init__(self, gate: FairGate, identity: str, charged: float) -> None:
        self._gate = gate
        self.identity = identity
        self.charged = charged
        self.released = False

    def release(self, tokens: float) -> None:
        """Free the slot; correct the caller's counter from the estimate to what it used."""
        if not self.released:
            self.released = True
            self._gate.release(self.identity, tokens - self.charged)


class FairGate:
    """The capacity of one model: at most ``concurrency`` in flight, the rest queued fairly."""

    def __init__(self, cap: Capacity) -> None:
        self._cap = cap
        self._in_flight = 0
        self._served: dict[str, float] = {}  # the virtual token counters
        self._waiting: dict[str, deque[tuple[asyncio.Future, float]]] = {}  # per caller, oldest first
        self._queued = 0
        self._batch: deque[tuple[asyncio.Future, str, float]] = deque()  # batch-class waiters, oldest first

    @property
    def queued(self) -> int:
        return self._queued

    async def acquire_batch(self, identity: str, estimate: float) -> Slot:
        """A slot for a batch line: free now only if nobody waits, else after every other waiter."""
        if self._in_flight < self._cap.concurrency and not self._queued and not self._batch:
            self._in_flight += 1
            self._served[identity] = self._served.get(identity, 0.0) + estimate
            return Slot(self, identity, estimate)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        entry = (fut, identity, estimate)
        self._batch.append(entry)
        try:
            await asyncio.shield(fut)
        except asyncio.CancelledError:
            if _granted(fut):
                self.release(identity, -estimate)  # admitted, but the line was stopped
            else:
                fut.cancel()
                if entry in self._batch:
                    self._batch.remove(entry)
            raise
        return Slot(self, identity, estimate)

    async def acquire(self, identity: str, estimate: float) -> Slot:
        if self._in_flight < self._cap.concurrency and not self._queued:
            self._in_flight += 1
            self._served[identity] = self._served.get(identity, 0.0) + estimate
            return Slot(self, identity, estimate)
        if self._queued >= self._cap.queue:
            self._make_room(identity)
        line = self._waiting.get(identity)
        if not line:
            # a caller that starts waiting starts level with the least-served waiting caller: idling earns no credit
            floor = min((self._served[w] for w, q in self._waiting.items() if q), default=None)
            if floor is not None:
                self._served[identity] = max(self._served.get(identity, 0.0), floor)
            line = self._waiting[identity] = deque()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        line.append((fut, estimate))
        self._queued += 1
        try:
            await asyncio.wait_for(asyncio.shield(fut), self._cap.queue_timeout_s)
        except asyncio.TimeoutError:
            if _granted(fut):
                return Slot(self, identity, estimate)  # admitted at the last moment
            self._forget(identity, fut)
            raise Unavailable("The model stayed at capacity for the whole queue deadline; retry later.",
                              code="capacity_timeout", retry_after=1.0) from None
        except asyncio.CancelledError:
            if _granted(fut):
                self.release(identity, -estimate)  # admitted, but the caller left
            else:
                self._forget(identity, fut)
            raise
        return Slot(self, identity, estimate)

    def _make_room(self, identity: str) -> None:
        """The queue is full: push out the newest waiter of the caller holding the most places,
        if it holds at least two more than this caller; else refuse this caller."""
        mine = len(self._waiting.get(identity) or ())
        longest = max(self._waiting.values(), key=len, default=None)
        if longest is None or len(longest) < mine + 2:
            raise _full()
        fut, _ = longest.pop()
        self._queued -= 1
        fut.set_exception(_full())

    def _forget(self, identity: str, fut: asyncio.Future) -> None:
        fut.cancel()
        line = self._waiting.get(identity)
        if line is not None:
            for i, (f, _) in enumerate(line):
                if f is fut:
                    del line[i]
                    self._queued -= 1
                    break
            if not line:
                del self._waiting[identity]  # callers choose identities: keep no empty line behind

    def release(self, identity: str, correction: float) -> None:
        self._served[identity] = self._served.get(identity, 0.0) + correction
        backlogged = list(self._waiting)  # only callers with someone waiting have a line
        if not backlogged and self._batch:  # nobody else waits: the oldest batch line takes the slot
            fut, who, estimate = self._batch.popleft()
            self._served[who] = self._served.get(who, 0.0) + estimate
            fut.set_result(None)
            return
        if not backlogged:
            self._in_flight -= 1
            if len(self._served) > 10_000:
                self._served.clear()  # nobody waits: forget the history, keep memory flat
            return
        # the slot passes straight to the oldest request of the least-served waiting caller
        who = min(backlogged, key=lambda w: self._served.get(w, 0.0))
        line = self._waiting[who]
        fut, estimate = line.popleft()
        if not line:
            del self._waiting[who]
        self._queued -= 1
        self._served[who] = self._served.get(who, 0.0) + estimate
        fut.set_result(None)


def _granted(fut: asyncio.Future) -> bool:
    """The slot was passed to this waiter (not pushed out of the queue, not given up)."""
    return fut.done() and not fut.cancelled() and fut.exception() is None


def _full() -> RateLimited:
    return RateLimited("The model is at capacity and your share of its queue is full; retry shortly.",
                       code="capacity_exceeded", retry_after=1.0)


class Admission:
    """The gates of every model that declares a capacity."""

    def __init__(self, capacities: dict[str, Capacity]) -> None:
        self._gates = {model: FairGate(cap) for model, cap in capacities.items()}

    def __bool__(self) -> bool:
        return bool(self._gates)

    def update(self, capacities: dict[str, Capacity]) -> None:
        """Gates for these capacities: one whose capacity is unchanged is kept with its queue; a new or changed one
        starts empty (calls holding a slot of the old gate give it back there)."""
        self._gates = {name: gate if (gate := self._gates.get(name)) is not None and gate._cap == cap
                       else FairGate(cap) for name, cap in capacities.items()}

    async def acquire(self, model: str, identity: str, estimate: float, batch: bool = False) -> Slot | None:
        gate = self._gates.get(model)
        if gate is None:
            return None
        return await (gate.acquire_batch if batch else gate.acquire)(identity, estimate)
