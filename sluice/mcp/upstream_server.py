"""One upstream MCP server as the gateway calls it (``Upstream``): the operations every kind answers, the
in-flight count a retired server waits on, and the notices it hands on. Its kinds: ``HttpUpstream``
(``upstreams.py``) and ``StdioUpstream`` (``stdio_upstream.py``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import mcp.types as mt

from ..core.errors import UpstreamError
from ..core.mcp_config import McpServer
from .client import ToolResult
from .credentials import Minter, ServerCredential

log = logging.getLogger("sluice.mcp")
MAX_PAGES = 100  # a server that pages forever is cut off
Notice = Callable[[str, str, "dict[str, Any] | None"], None]  # (server, method, params) of a notification a server
# sent on sluice's session


class Upstream:
    """One server as the gateway calls it: ``HttpUpstream`` (a URL) or ``StdioUpstream`` (a command).
    ``on_notice`` gets the notifications it sends on sluice's session (``notify.Streams.relay``)."""

    def __init__(self, spec: McpServer, on_notice: Notice | None = None, mint: Minter | None = None) -> None:
        self.spec = spec
        self.namespace = spec.namespace
        self._on_notice = on_notice
        self.credential = ServerCredential(spec, mint)  # its own Authorization, asked per request (credentials.py)
        self.inflight = 0  # requests on their way to the server: a retired server is closed once none is
        self.retired = False
        self._drained: asyncio.Event | None = None

    def _enter(self) -> None:
        """A request starts (refused once the server is retired: it no longer takes any)."""
        if self.retired:
            raise UpstreamError(f"MCP server {self.spec.name} was removed or replaced by a policy change; call again.",
                                code="mcp_upstream_error")
        self.inflight += 1

    def _leave(self) -> None:
        self.inflight -= 1
        if self._drained is not None and not self.inflight:
            self._drained.set()

    async def retire(self) -> None:
        """Out of service (a policy version removed or changed it): no new request; those on their way finish or
        fail at their own timeouts (the session and its timers live until then); then ``close``."""
        self.retired = True
        if self.inflight:
            self._drained = asyncio.Event()
            bound = 4 * self.spec.timeout_s + 5  # two attempts, each after a handshake of its own, all bounded
            try:
                await asyncio.wait_for(self._drained.wait(), bound)
            except asyncio.TimeoutError:
                log.warning("mcp: server %s: %d requests still on their way after %.0f s; closing", self.spec.name,
                            self.inflight, bound)
        await self.close()

    def _notice(self, method: str, params: dict[str, Any] | None = None) -> None:
        if self._on_notice is not None:
            self._on_notice(self.spec.name, method, params)

    def start(self) -> None:
        """Begin what should not wait for the first call (a stdio server's process)."""

    async def list_tools(self) -> list[mt.Tool]:
        """Every tool the server lists (all pages)."""
        raise NotImplementedError

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult | mt.CallToolResult:
        raise NotImplementedError

    async def list_resources(self) -> list[mt.Resource]:
        raise NotImplementedError

    async def list_resource_templates(self) -> list[mt.ResourceTemplate]:
        raise NotImplementedError

    async def list_prompts(self) -> list[mt.Prompt]:
        raise NotImplementedError

    async def read_resource(self, uri: str) -> mt.ReadResourceResult:
        raise NotImplementedError

    async def get_prompt(self, name: str, arguments: dict[str, str] | None) -> mt.GetPromptResult:
        raise NotImplementedError

    async def complete(self, ref: mt.PromptReference | mt.ResourceTemplateReference, argument: dict[str, str],
                       context: dict[str, str] | None) -> mt.CompleteResult:
        raise NotImplementedError

    async def subscribe(self, uri: str, on: bool = True) -> None:
        """``resources/subscribe`` (``on``) or ``resources/unsubscribe`` on sluice's session (``subscriptions.py``)."""
        raise NotImplementedError

    def subscribes(self) -> bool | None:
        """Whether the server said it takes resource subscriptions (None: not known yet)."""
        return None

    def generation(self) -> int:
        """Which of sluice's sessions with the server this is: a new one holds none of the last one's subscriptions."""
        return 0

    async def ping(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass


