"""A Redis the cache could not reach: not asked again for ``retry_s`` (so no request waits on a Redis that is
down), and said in the log once a minute at most (a dead Redis would flood it). The entries' store and the
semantic index each keep one."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("sluice.cache")


class Outage:
    __slots__ = ("_retry", "_message", "_until", "_logged")

    def __init__(self, retry_s: float, message: str) -> None:
        self._retry = retry_s
        self._message = message  # logged with the error's kind and ``retry_s``
        self._until = 0.0
        self._logged = -60.0

    @property
    def up(self) -> bool:
        return self._until <= time.monotonic()

    def failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._until = now + self._retry
        if now - self._logged >= 60.0:
            self._logged = now
            log.warning(self._message, type(exc).__name__, self._retry)
