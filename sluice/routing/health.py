"""Active health checks: probe every upstream's replicas now and then; a deployment none of whose
replicas answers has its targets' breakers opened, so traffic moves to fallbacks before any request
fails there. Recovery is left to the breakers' own half-open probes (real requests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .table import RouteTable

log = logging.getLogger("sluice.routing")


async def check_once(transports: Mapping[str, Sequence[Any]], table: RouteTable) -> dict[str, bool]:
    """Probe every upstream once; trip the breakers of targets on an upstream that is down."""
    names = list(transports)
    results = await asyncio.gather(*(asyncio.gather(*(t.probe() for t in transports[n])) for n in names))
    health: dict[str, bool] = {}
    for name, answers in zip(names, results):
        known = [a for a in answers if a is not None]
        if not known:
            continue  # this transport cannot tell: the breakers alone decide
        health[name] = any(known)
        if not health[name]:
            for t in table.targets.values():
                if t.upstream == name and t.breaker is not None:
                    t.breaker.trip()
    return health


async def run_checks(transports: Mapping[str, Sequence[Any]], table: Callable[[], RouteTable], interval: float) -> None:
    """Check forever (a background task), against whatever table is current."""
    while True:
        try:
            down = [n for n, ok in (await check_once(transports, table())).items() if not ok]
            if down:
                log.warning("health check: no replica of %s answers", ", ".join(down))
        except Exception as exc:  # a probe bug must not end the loop
            log.warning("health check failed: %s", type(exc).__name__)
        await asyncio.sleep(interval)
