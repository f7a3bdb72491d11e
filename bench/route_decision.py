"""Micro-benchmark of the per-request routing decision (no I/O): ``python bench/route_decision.py``.

Times ``RouteTable.decide`` for a one-target ``models:`` route (today's config) and a route of two
weighted targets with breakers, plus a least-outstanding pick/done across two replicas.
"""

from __future__ import annotations

import timeit

from sluice.core import config
from sluice.routing import Deployment, LeastOutstanding, Replica, RouteTable, from_config


class _P:
    identity_id, identity_name, team, environment = "id-1", "app", None, "dev"


class _X:
    headers: dict = {}
    request_id = "req-1"


class _R:
    model, metadata = "chat", None


def main() -> None:
    cfg = config.parse({
        "upstreams": [{"name": "a", "base_url": "http://127.0.0.1:1/v1", "replicas": ["http://127.0.0.1:2/v1"]}],
        "models": [{"name": "sim-small", "upstream": "a"}],
        "registry": [{"name": "chat", "versions": [{"version": "v1", "upstream": "a", "approved": True},
                                                   {"version": "v2", "upstream": "a", "approved": True}]}],
        "routes": [{"name": "canary", "match": {"models": ["chat"]},
                    "targets": [{"target": "chat@v1", "weight": 90}, {"target": "chat@v2", "weight": 10}]}],
    })
    deployment = Deployment("a", [Replica("a/0"), Replica("a/1")], LeastOutstanding())
    table = RouteTable(from_config(cfg), transports={"a": deployment})
    p, x, r = _P(), _X(), _R()
    n = 200_000
    for label, alias in (("one-target models: route", "sim-small"), ("two weighted targets + breakers", "chat")):
        best = min(timeit.repeat(lambda: table.decide(alias, p, r, x, 0.0), number=n, repeat=5)) / n
        print(f"decide, {label}: {best * 1e6:.3f} us")
    placement = deployment.placement

    def pick_done() -> None:
        placement.done(placement.pick(deployment.live, ""))

    best = min(timeit.repeat(pick_done, number=n, repeat=5)) / n
    print(f"least-outstanding pick+done, 2 replicas: {best * 1e6:.3f} us")
    header = table.decide("chat", p, r, x, 0.0)
    best = min(timeit.repeat(lambda: header.header(), number=n, repeat=5)) / n  # type: ignore[union-attr]
    print(f"x-sluice-route value: {best * 1e6:.3f} us")


if __name__ == "__main__":
    main()
