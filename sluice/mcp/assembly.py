"""The MCP gateway's parts put together for one replica (the composition root hands in what they share with the
model path): the servers' streams and sessions, the gateway, the servers made live at each policy version, and
with Redis the fan-out that carries resource updates to a session's stream on another replica."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..core.mcp_config import Mcp
from ..core.types import ChangeEvent
from ..store.mcp_sessions import EndedSessions
from .fanout import Fanout
from .gateway import McpGateway
from .notify import Streams
from .session import Sessions
from .upstreams import Upstreams


class McpParts:
    """``streams`` (GET /mcp[/{server}]), ``upstreams``, ``gateway``, ``fanout`` (None without Redis) and
    ``ended`` (the store's ended sessions, purged hourly by the caller)."""

    def __init__(self, cfg: Mcp, policy: Any, store: Any, pepper: bytes, approvals: Any, *, admission: Any,
                 mint: Callable[..., Any], limiter: Any, metrics: Any, tracer: Any,
                 redis: tuple[str, str, float] | None) -> None:
        current = lambda: policy.current  # noqa: E731  # the active version, read at each use
        self.streams = streams = Streams(cfg.streams, current)  # what the servers send, and sluice's own list_changed
        self.upstreams = Upstreams(policy.current.document.mcp.servers, cfg, on_notice=streams.relay, mint=mint)
        self.ended = EndedSessions(store)  # a DELETE ends a session on every replica

        async def record_change(event: ChangeEvent) -> None:  # a quarantine changes what callers see: their streams hear it
            await store.record_change(event)
            if event.action == "mcp.quarantine":
                detail = event.detail or {}
                streams.quarantined(str(detail.get("server", "")), str(detail.get("kind", "tool")))

        self.gateway = gateway = McpGateway(
            cfg, self.upstreams, Sessions(pepper, cfg.session_ttl_s, self.ended, cfg.ended_check_s), approvals, current,
            record_change=record_change, limiter=limiter, metrics=metrics, tracer=tracer, admission=admission)
        policy.on_install.append(lambda active: gateway.activate(active.document.mcp.servers))
        gateway.activate(policy.current.document.mcp.servers)  # the queues, and a version installed since the servers were read
        self.fanout: Fanout | None = None
        if redis is not None:  # resource updates reach a session's stream on any replica (fanout.py)
            self.fanout = Fanout(*redis)
            self.fanout.start()
