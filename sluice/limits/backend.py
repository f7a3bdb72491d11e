"""Where counters live: the interface both backends keep, behaviour for behaviour."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from .checks import Verdict
from .plan import Plan


class LimitBackend(abc.ABC):
    """Admits a request into all its checks at once, or into none; settles afterwards."""

    @abc.abstractmethod
    async def acquire(self, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> Verdict:
        """Atomically: if the request fits every check of the plan, take its amounts; else take nothing.

        ``amounts`` holds one number per measure (``checks.MEASURES``); ``ttl`` the seconds
        each kind of window lasts from now.
        """

    @abc.abstractmethod
    async def settle(self, request_id: str, plan: Plan, deltas: Sequence[float]) -> None:
        """After the call: give back (negative delta) or take more (positive) per measure; end leases."""

    async def charged(self, key: str) -> list[float] | None:
        """What the counters hold for the work named ``key`` (a batch line, however often it runs), or None."""
        return None

    async def charge(self, key: str, amounts: Sequence[float]) -> None:
        """Remember what the counters hold for ``key`` (for a day: a line is retried within its batch's window)."""

    async def ping(self) -> None:
        """Raise ``BackendUnavailable`` when the counters cannot be reached (in process: never)."""

    async def close(self) -> None:
        """Release connections."""


class BackendUnavailable(Exception):
    """The counters cannot be reached (Redis down or slow)."""
