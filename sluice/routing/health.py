"""Active health checks: probe every replica of every upstream now and then. A replica that fails
is taken out of placement (and its prefix index dropped: it may come back with an empty cache)
until it answers again; a deployment none of whose replicas answers has its targets' breakers
opened, so traffic moves to fallbacks before any request fails there. Recovery of a deployment
is left to the breakers' own half-open probes (real requests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from .placement import Deployment
from .table import RouteTable

log = logging.getLogger("sluice.routing")


async def check_once(deployments: Mapping[str, Deployment], table: RouteTable) -> dict[str, bool]:
    """Probe every replica once; eject or restore replicas; trip the breakers of targets on an upstream
    that is down. Returns, per upstream whose transports can tell, whether any replica answered."""
    names = list(deployments)
    results = await asyncio.gather(*(asyncio.gather(*(r.transport.probe() for r in deployments[n].replicas))
                                     for n in names))
    health: dict[str, bool] = {}
    for name, answers in zip(names, results):
        deployment = deployments[name]
        for replica, ok in zip(deployment.replicas, answers):
            if ok is False:
                deployment.eject(replica)
            elif ok:
                deployment.restore(replica)
        known = [a for a in answers if a is not None]
        if not known:
            continue  # this transport cannot tell: the breakers alone decide
        health[name] = any(known)
        if not health[name]:
            for t in table.targets.values():
                if t.upstream == name and t.breaker is not None:
                    t.breaker.trip()
    return health


async def run_checks(deployments: Mapping[str, Deployment], table: Callable[[], RouteTable], interval: float) -> None:
    """Check forever (a background task), against whatever table is current."""
    while True:
        try:
            down = [n for n, ok in (await check_once(deployments, table())).items() if not ok]
            if down:
                log.warning("health check: no replica of %s answers", ", ".join(down))
        except Exception as exc:  # a probe bug must not end the loop
            log.warning("health check failed: %s", type(exc).__name__)
        await asyncio.sleep(interval)
