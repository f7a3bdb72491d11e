"""The routing state of one replica: the compiled table, kept in step with the policy in the store.

The store holds the policy document and a version number. A change made through the control plane
of any replica writes a new version (compare-and-set, so two operators never lose each other's
change); every replica polls the version (one tiny query per ``sync_interval_s``) and recompiles
when it moved. ``PolicyStore`` is the small interface that a unified state sync can implement later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from ..core.config import Breaker
from .breaker import CircuitBreaker
from .policy import PolicyError, RoutingPolicy, seed
from .table import RouteTable

log = logging.getLogger("sluice.routing")
_decode = msgspec.json.Decoder(RoutingPolicy)


class PolicyStore(Protocol):
    """Where the routing policy document lives (the SQL store implements it)."""

    async def load_routing(self) -> tuple[int, bytes] | None:
        """(version, document) or None before the first save."""

    async def save_routing(self, document: bytes, expect_version: int) -> int | None:
        """Write a new version if the stored one is still ``expect_version`` (0: none yet); the new version, or None."""

    async def routing_version(self) -> int:
        """The stored version (0: none yet)."""


class RoutingState:
    """The current ``RouteTable`` (swapped whole on a change) and the changes that produce the next one."""

    def __init__(self, file_policy: RoutingPolicy, store: PolicyStore | None, *,
                 transports: Mapping[str, Sequence[Any]], breaker: Breaker) -> None:
        self._file = file_policy
        self._store = store
        self._transports = transports
        self._breaker = breaker
        self._breakers: dict[str, CircuitBreaker] = {}  # kept across recompiles: a change does not reset health
        self.version = 0
        self.table = self._compile(file_policy)
        self._lock = asyncio.Lock()
        self.on_change: list[Callable[[RouteTable], None]] = []

    def _compile(self, policy: RoutingPolicy) -> RouteTable:
        return RouteTable(policy, transports=self._transports, breakers=self._breakers, breaker=self._breaker)

    @property
    def policy(self) -> RoutingPolicy:
        return self.table.policy

    def _install(self, version: int, policy: RoutingPolicy) -> None:
        self.install(version, self._compile(policy))

    def compile(self, policy: RoutingPolicy) -> RouteTable:
        """A table for this policy with this replica's transports and breakers, not yet serving."""
        return self._compile(policy)

    def install(self, version: int, table: RouteTable) -> None:
        """Serve this table from the next request on (the versioned policy swaps it in whole)."""
        self.table, self.version = table, version  # one assignment each: requests see old or new
        for fn in self.on_change:
            fn(table)

    async def load(self) -> None:
        """At start: the stored policy plus what the file adds; the file alone seeds an empty store."""
        if self._store is None:
            return
        async with self._lock:
            got = await self._store.load_routing()
            stored = _decode.decode(got[1]) if got else None
            merged = seed(stored, self._file)
            version = got[0] if got else 0
            if stored is None or merged != stored:
                saved = await self._store.save_routing(msgspec.json.encode(merged), version)
                if saved is None:  # another replica seeded at the same moment: take theirs
                    got = await self._store.load_routing()
                    assert got is not None
                    version, merged = got[0], _decode.decode(got[1])
                else:
                    version = saved
            self._install(version, merged)

    async def refresh(self) -> bool:
        """Pick up a change another replica made; True when the table changed."""
        if self._store is None or await self._store.routing_version() == self.version:
            return False
        async with self._lock:
            got = await self._store.load_routing()
            if got is None or got[0] == self.version:
                return False
            self._install(got[0], _decode.decode(got[1]))
            log.info("routing policy version %d loaded", got[0])
            return True

    async def change(self, fn: Callable[[RoutingPolicy], RoutingPolicy]) -> tuple[RoutingPolicy, RoutingPolicy]:
        """Apply a change to the newest stored policy and install it here at once; (before, after)."""
        async with self._lock:
            for _ in range(5):
                if self._store is not None:
                    got = await self._store.load_routing()
                    if got is not None and got[0] != self.version:
                        self._install(got[0], _decode.decode(got[1]))
                before = self.policy
                after = fn(before)
                try:
                    RouteTable(after)  # compiles, or fails on a broken reference before anything is saved
                except KeyError as exc:
                    raise PolicyError(f"the change names {exc.args[0]!r}, which is not in the registry") from None
                if self._store is None:
                    self._install(self.version + 1, after)
                    return before, after
                saved = await self._store.save_routing(msgspec.json.encode(after), self.version)
                if saved is not None:
                    self._install(saved, after)
                    return before, after
            raise PolicyError("the routing policy kept changing under this change; retry")

    async def run_sync(self, interval: float) -> None:
        """Poll the store's version forever (a background task)."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except Exception as exc:  # a store hiccup: keep routing with what we have
                log.warning("routing sync failed: %s", type(exc).__name__)
