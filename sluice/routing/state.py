"""The routing state of one replica: the compiled table that serves, swapped whole.

Routing has one write path: the versioned policy (``sluice.policy``) compiles each version's table
here (``compile``) and swaps it in (``install``); the policy service keeps replicas in step through
the store. Breakers live across recompiles, so a change does not reset health.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..core.config import Breaker
from .breaker import CircuitBreaker
from .policy import RoutingPolicy
from .table import RouteTable

log = logging.getLogger("sluice.routing")


class RoutingState:
    """The current ``RouteTable``, swapped whole when a policy version is installed."""

    def __init__(self, file_policy: RoutingPolicy, *, transports: Mapping[str, Sequence[Any]], breaker: Breaker) -> None:
        self._transports = transports
        self._breaker = breaker
        self._breakers: dict[str, CircuitBreaker] = {}  # kept across recompiles: a change does not reset health
        self.version = 0
        self.table = self._compile(file_policy)
        self.on_change: list[Callable[[RouteTable], None]] = []

    def _compile(self, policy: RoutingPolicy) -> RouteTable:
        return RouteTable(policy, transports=self._transports, breakers=self._breakers, breaker=self._breaker)

    @property
    def policy(self) -> RoutingPolicy:
        return self.table.policy

    def compile(self, policy: RoutingPolicy) -> RouteTable:
        """A table for this policy with this replica's transports and breakers, not yet serving."""
        return self._compile(policy)

    def install(self, version: int, table: RouteTable) -> None:
        """Serve this table from the next request on (the versioned policy swaps it in whole)."""
        self.table, self.version = table, version  # one assignment each: requests see old or new
        for fn in self.on_change:
            fn(table)
