"""Limits on tool calls: the model calls' limiter (same backend, memory or Redis; same key prefix), MCP's own rules.

``mcp.limits`` compiles into up to four rules over MCP calls only, so a rule written for model calls never
counts a tool call: calls per minute per identity, calls per minute per namespaced tool (every caller
together), calls per minute of one identity to one tool, tool calls in flight per server. A call is a request that spends no tokens (as
``count_tokens``): one request and one concurrency lease, settled when the upstream answers. A refused
call is JSON-RPC error -32013 ``rate_limit_exceeded`` whose ``data.retry_after`` is seconds.

A server with a ``capacity`` (``mcp.servers[].capacity``: calls in flight, a queue, its deadline) puts its
calls through a fair queue on each replica, the one model capacities use (``sluice.limits.fairness``): past
the concurrency, a waiting call is admitted by which identity has had the fewest calls admitted, not by
arrival, so one agent looping on a tool cannot make every other agent wait behind its backlog. A full
share of the queue is -32013 ``capacity_exceeded``, a call that waited past the deadline -32013
``capacity_timeout`` (both with ``retry_after``). The queue is each replica's own; the exact bound across
replicas is ``concurrency_per_server``.

The limiter is handed in by the composition root (``sluice.mcp`` does not import ``sluice.limits``):
anything with ``compile_rules``, ``reserve``/``reserve_now``, ``inline`` and ``settle``.
"""

from __future__ import annotations

from typing import Any

from ..core.errors import GatewayError, RateLimited
from ..core.limits_config import LimitRule
from ..core.mcp_config import McpLimits
from .jsonrpc import Refusal

RATE_LIMITED = -32013
_ONE_CALL = (1.0, 0.0, 0.0, 1.0, 0.0)  # requests, input tokens, output tokens, concurrency, spend


def rules_of(cfg: McpLimits) -> list[LimitRule]:
    """The knobs as limiter rules; the subject of a call is (identity, team, ``mcp:{tool}``, ``mcp:{server}``)."""
    out = []
    if cfg.calls_per_minute_per_identity:
        out.append(LimitRule(name="mcp-identity", per=["identity"], match={"model": "mcp:*"},
                             requests_per_minute=cfg.calls_per_minute_per_identity))
    if cfg.calls_per_minute_per_tool:
        out.append(LimitRule(name="mcp-tool", per=["model"], match={"model": "mcp:*"},
                             requests_per_minute=cfg.calls_per_minute_per_tool))
    if cfg.calls_per_minute_per_identity_per_tool:
        out.append(LimitRule(name="mcp-identity-tool", per=["identity", "model"], match={"model": "mcp:*"},
                             requests_per_minute=cfg.calls_per_minute_per_identity_per_tool))
    if cfg.concurrency_per_server:
        out.append(LimitRule(name="mcp-server", per=["route"], match={"route": "mcp:*"},
                             concurrent_requests=cfg.concurrency_per_server))
    return out


class CallLimits:
    """Takes a call's place in the MCP rules before it goes upstream, gives the lease back after."""

    __slots__ = ("_limiter", "_rules", "_admission")

    def __init__(self, limiter: Any, cfg: McpLimits, admission: Any = None) -> None:
        rules = rules_of(cfg)
        self._limiter = limiter if rules else None
        self._rules = limiter.compile_rules(rules) if limiter is not None and rules else None
        # the servers' fair queues (``acquire(server, identity, 1.0)`` -> a slot or None), handed in as the limiter is
        self._admission = admission if admission else None

    def queues(self, admission: Any) -> None:
        """The servers' fair queues as a policy version left them (none: a call waits in no queue)."""
        self._admission = admission if admission else None

    async def take(self, request_id: str, identity_id: str, team: str | None, server: str, tool: str) -> Any:
        """The call's hold (None: no rule, no queue): its reservation, then its place in the server's fair queue;
        or a ``Refusal`` naming the limit and when to retry (a reservation made is given back)."""
        reservation = await self._reserve(request_id, identity_id, team, server, tool)
        if self._admission is None:
            return reservation
        try:
            slot = await self._admission.acquire(server, identity_id, 1.0)
        except GatewayError as exc:  # the queue share is full, or the call waited past the deadline
            self._settle(reservation)
            why = ("stayed at capacity for the whole queue deadline; retry later" if exc.code == "capacity_timeout" else
                   "is at capacity and your share of its queue is full; retry shortly")
            raise Refusal(RATE_LIMITED, f"The MCP server {server} {why}.", exc.code or "capacity_exceeded",
                          data={"retry_after": exc.retry_after or 1.0}) from None
        except BaseException:
            self._settle(reservation)
            raise
        return (reservation, slot) if slot is not None else reservation

    async def _reserve(self, request_id: str, identity_id: str, team: str | None, server: str, tool: str) -> Any:
        limiter = self._limiter
        if limiter is None:
            return None
        try:
            if limiter.inline:
                r, _ = limiter.reserve_now(request_id, identity_id, team, f"mcp:{tool}", f"mcp:{server}", _ONE_CALL,
                                           self._rules)
            else:
                r, _ = await limiter.reserve(request_id, identity_id, team, f"mcp:{tool}", f"mcp:{server}", _ONE_CALL,
                                             self._rules)
        except RateLimited as exc:
            retry = round(exc.retry_after or 1.0, 3)
            raise Refusal(RATE_LIMITED, exc.message, "rate_limit_exceeded", data={"retry_after": retry}) from None
        except GatewayError as exc:  # the limits backend is down and limits fail closed
            raise Refusal(RATE_LIMITED, exc.message, exc.code or "limiter_unavailable",
                          data={"retry_after": exc.retry_after or 1.0}) from None
        return r

    def release(self, hold: Any) -> None:
        if type(hold) is tuple:
            reservation, slot = hold
            slot.release(1.0)
            self._settle(reservation)
        else:
            self._settle(hold)

    def _settle(self, reservation: Any) -> None:
        if reservation is not None:
            self._limiter.settle(reservation, 0.0, 0.0, 0.0)  # type: ignore[union-attr]
