"""Where counters live: the interface both backends keep, behaviour for behaviour."""

from __future__ import annotations

import abc

from .checks import Check, Verdict


class LimitBackend(abc.ABC):
    """Admits a request into all its checks at once, or into none; settles afterwards."""

    @abc.abstractmethod
    async def acquire(self, request_id: str, checks: list[Check]) -> Verdict:
        """Atomically: if every check fits, take every cost; else take nothing."""

    @abc.abstractmethod
    async def settle(self, request_id: str, checks: list[Check], deltas: list[float]) -> None:
        """After the call: give back (negative delta) or take more (positive) per check; end leases."""

    async def close(self) -> None:
        """Release connections."""


class BackendUnavailable(Exception):
    """The counters cannot be reached (Redis down or slow)."""
