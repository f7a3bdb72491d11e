"""Recent routing decisions of this replica, to answer "why did this request go there?".

A bounded ring in memory: each replica remembers only the requests it served, and only the last
``decisions_kept`` of them. Recording is one append of the ``Decision`` the route stage made anyway.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .breaker import CircuitBreaker
from .table import Decision


class DecisionLog:
    """The last N decisions, looked up by request id (a scan: this is the control plane, not the hot path)."""

    __slots__ = ("_ring",)

    def __init__(self, size: int) -> None:
        self._ring: deque[Decision] = deque(maxlen=size)

    def add(self, decision: Decision) -> None:
        self._ring.append(decision)

    def find(self, request_id: str) -> Decision | None:
        for d in reversed(self._ring):
            if d.request_id == request_id:
                return d
        return None


def _state(b: CircuitBreaker | None) -> str:
    return b.state if b is not None else "none"


def explain(d: Decision) -> dict[str, Any]:
    """A decision as JSON: matched route, candidates and weights, what was left out, breakers, attempts."""
    route = d.route
    return {
        "request_id": d.request_id,
        "at": d.at,
        "model": d.alias,
        "route": route.name,
        "match": route.spec.match,
        "target": d.target.name if d.target is not None else None,
        "sticky": route.sticky,
        "candidates": [{"target": t.name, "weight": route.weights.get(t.name, 0),
                        "share": (route.weights.get(t.name, 0) / route.total) if route.total else 0.0,
                        "upstream": t.upstream, "breaker": _state(t.breaker)} for t in route.targets],
        "fallbacks": [{"target": t.name, "upstream": t.upstream, "breaker": _state(t.breaker)} for t in route.fallbacks],
        "excluded": route.excluded,
        "skipped": d.skipped or [],
        "attempts": [{"target": name, "outcome": outcome, "ms": round(ms, 3)} for name, outcome, ms in d.attempts],
        "policy": {"version": d.policy.version, "hash": d.policy.hash} if d.policy is not None else None,
        "listener": d.listener,
    }
