"""Placement across the replicas of one deployment: least outstanding requests.

The interface is the one the KV-cache-aware placement (``placement.py``) implements:
``pick(replicas, key) -> replica`` counts the request in flight on the replica at the moment it is
picked (bursts with tied scores would otherwise all land on one replica) and ``done(replica)``
takes it off. ``app`` chooses the class, so a prefix-affine one swaps in without other changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class Placement(Protocol):
    """Chooses one replica of a deployment for a request and keeps its in-flight count."""

    def pick(self, replicas: Sequence[Any], request_ctx_key: Any) -> Any: ...

    def done(self, replica: Any) -> None: ...


class LeastOutstanding:
    """The replica with the fewest requests in flight; ties go to the first listed."""

    __slots__ = ("_in_flight",)

    def __init__(self) -> None:
        self._in_flight: dict[Any, int] = {}  # replica (hashed by identity) -> requests in flight

    def pick(self, replicas: Sequence[Any], request_ctx_key: Any = None) -> Any:
        """Choose and count one request in flight on the chosen replica."""
        counts = self._in_flight
        best = replicas[0]
        low = counts.get(best, 0)
        if low:  # an idle first replica wins at once; otherwise the least loaded (a loop: min() with a key cost 2x)
            for r in replicas[1:]:
                c = counts.get(r, 0)
                if c < low:
                    best, low = r, c
        counts[best] = low + 1
        return best

    def done(self, replica: Any) -> None:
        """The request on this replica ended."""
        self._in_flight[replica] -= 1

    def in_flight(self, replica: Any) -> int:
        """Requests now in flight on a replica."""
        return self._in_flight.get(replica, 0)
