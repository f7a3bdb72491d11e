"""The upstream MCP servers: one long-lived client session per server, shared by every caller.

sluice is an MCP client to each configured server: its own Streamable HTTP client (``client.py``) for a
server at a URL, the ``mcp`` SDK's stdio client for a server sluice starts itself (``stdio.py``). The
session is made once and reused (no handshake per call); it is made again when the server forgets it or
the connection fails, and a stdio server that dies is started again.
The servers are the active policy's ``mcp.servers``: ``Upstreams.reconcile`` makes the live set match each
version this replica activates. A new server is started, a removed one retired (no new request; the ones on
their way finish within their own timeouts; then its session is ended and its process stopped), a changed one
replaced by a new one (retired likewise); an unchanged one keeps its session.
What goes upstream carries the server's own credential (``credential_env``, or a token sluice mints for it:
``credentials.py``), or none: the caller's key or token is never handed to a tool server, and callers never
share a header with it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import mcp.types as mt
from pydantic import BaseModel, ValidationError

from ..core.errors import ConfigError
from ..core.mcp_config import Mcp, McpServer, refusal, unrunnable
from .client import HttpClient, Invalid, ToolResult
from .credentials import Minter
from .stdio import Sandbox, StdioServer, sandbox_for
from .stdio_upstream import StdioUpstream
from .upstream_server import MAX_PAGES, Notice, Upstream, log

__all__ = ["HttpUpstream", "Notice", "StdioUpstream", "Upstream", "Upstreams"]


class HttpUpstream(Upstream):
    """A Streamable HTTP server, over sluice's own client (``client.py``); results other than a tool's are read
    into the SDK's types, which the gateway's lists, pins and content relay work with."""

    def __init__(self, spec: McpServer, max_bytes: int, on_notice: Notice | None = None, mint: Minter | None = None) -> None:
        super().__init__(spec, on_notice, mint)
        assert spec.url is not None
        self.client = HttpClient(spec.name, spec.url, spec.timeout_s, max_bytes, authorization=self.credential.authorization,
                                 on_message=self._notice)
        self._listen: asyncio.Task | None = None

    def start(self) -> None:
        """Make the session now and hold the server's own stream (GET), where its notifications arrive."""
        if self._listen is None:
            self._listen = asyncio.get_running_loop().create_task(self.client.listen(), name=f"mcp-listen-{self.spec.name}")

    async def _typed(self, method: str, params: dict[str, Any] | None, model: type[BaseModel]) -> Any:
        self._enter()
        try:
            raw = await self.client.request(method, params)
        finally:
            self._leave()
        try:
            return model.model_validate_json(bytes(raw))
        except ValidationError:
            raise Invalid(f"The answer of MCP server {self.spec.name} to {method} is not valid MCP.") from None

    async def _all(self, method: str, model: type[BaseModel], items: str) -> list[Any]:
        out: list[Any] = []
        cursor: str | None = None
        for _ in range(MAX_PAGES):
            page = await self._typed(method, {"cursor": cursor} if cursor else None, model)
            out += getattr(page, items)
            cursor = page.next_cursor  # type: ignore[attr-defined]
            if not cursor:
                break
        return out

    async def list_tools(self) -> list[mt.Tool]:
        return await self._all("tools/list", mt.ListToolsResult, "tools")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        if self.retired:  # ``_enter`` and ``_leave`` written out: the hot path (~25 ns a call, not ~75)
            self._enter()
        self.inflight += 1
        try:
            return await self.client.call_tool(name, arguments)
        finally:
            self.inflight -= 1
            if self._drained is not None and not self.inflight:
                self._drained.set()

    async def list_resources(self) -> list[mt.Resource]:
        return await self._all("resources/list", mt.ListResourcesResult, "resources")

    async def list_resource_templates(self) -> list[mt.ResourceTemplate]:
        return await self._all("resources/templates/list", mt.ListResourceTemplatesResult, "resource_templates")

    async def list_prompts(self) -> list[mt.Prompt]:
        return await self._all("prompts/list", mt.ListPromptsResult, "prompts")

    async def read_resource(self, uri: str) -> mt.ReadResourceResult:
        return await self._typed("resources/read", {"uri": uri}, mt.ReadResourceResult)  # type: ignore[no-any-return]

    async def get_prompt(self, name: str, arguments: dict[str, str] | None) -> mt.GetPromptResult:
        params: dict[str, Any] = {"name": name}
        if arguments is not None:
            params["arguments"] = arguments
        return await self._typed("prompts/get", params, mt.GetPromptResult)  # type: ignore[no-any-return]

    async def complete(self, ref: mt.PromptReference | mt.ResourceTemplateReference, argument: dict[str, str],
                       context: dict[str, str] | None) -> mt.CompleteResult:
        params: dict[str, Any] = {"ref": ref.model_dump(mode="json", by_alias=True, exclude_none=True),
                                  "argument": argument}
        if context is not None:
            params["context"] = {"arguments": context}
        return await self._typed("completion/complete", params, mt.CompleteResult)  # type: ignore[no-any-return]

    async def subscribe(self, uri: str, on: bool = True) -> None:
        await self.client.request("resources/subscribe" if on else "resources/unsubscribe", {"uri": uri})

    def subscribes(self) -> bool | None:
        caps = self.client.capabilities
        return bool((caps.get("resources") or {}).get("subscribe")) if caps else None

    def generation(self) -> int:
        return self.client.generation

    async def ping(self) -> None:
        self._enter()
        try:
            await self.client.request("ping")
        finally:
            self._leave()

    async def close(self) -> None:
        if self._listen is not None:
            self._listen.cancel()
            await asyncio.gather(self._listen, return_exceptions=True)
        await self.client.close()


class Upstreams:
    """The live servers by name (``by_name``, in the policy's order), made to match the active policy's
    ``mcp.servers`` by ``reconcile``; started here (a running event loop is needed): a stdio server's process,
    an HTTP server's session and stream."""

    def __init__(self, servers: list[McpServer], cfg: Mcp, on_notice: Notice | None = None,
                 mint: Minter | None = None) -> None:
        self._cfg = cfg
        self._on_notice = on_notice
        self._mint = mint
        self._sandbox: Sandbox | None = sandbox_for(cfg)
        # why this machine cannot isolate a stdio server's network (None: it can, or no stdio server may run)
        self.no_sandbox = None if self._sandbox is None or self._sandbox.isolated else self._sandbox.detail
        self.by_name: dict[str, Upstream] = {}
        self._specs: list[McpServer] | None = None
        self._leaving: dict[asyncio.Task, Upstream] = {}
        # a server the config file names fails the start as the config check always did; one only a policy
        # version names is left out with the reason logged, so no policy change keeps a replica from starting
        self.reconcile(servers, strict=frozenset(s.name for s in cfg.servers))

    def get(self, name: str) -> Upstream | None:
        return self.by_name.get(name)

    def vet(self, before: list[McpServer], after: list[McpServer], rollback: bool) -> str | None:
        """Why this replica refuses a policy change's servers (``mcp_config.refusal``: the config file's allow-list
        and sandbox, the credentials set here, stable namespaces); None: it takes them."""
        return None if before == after else refusal(self._cfg, before, after, self.no_sandbox, rollback)

    def reconcile(self, servers: list[McpServer], strict: frozenset[str] = frozenset()) -> None:
        """Make the live servers these, in one swap of ``by_name`` (no request sees half of it): unchanged ones
        kept with their sessions, new and changed ones made and started, removed and changed ones retired. One
        this replica cannot run (``mcp_config.unrunnable``: a command off the allow-list, no sandbox, a credential
        unset here) is never started; its calls find no server."""
        if servers == self._specs:
            return
        old, new, started = self.by_name, {}, []
        for spec in servers:
            current = old.get(spec.name)
            if current is not None and current.spec == spec:
                new[spec.name] = current
                continue
            why = unrunnable(self._cfg, spec, self.no_sandbox)
            up = None
            if why is None:
                try:
                    up = self._build(spec)
                except ConfigError as exc:
                    why = str(exc)
            if up is None:
                if spec.name in strict:
                    raise ConfigError(f"{why} - at `$.mcp.servers`")
                log.error("mcp: server %s is not run on this replica: %s", spec.name, why)
                continue
            new[spec.name] = up
            started.append(up)
        self.by_name, self._specs = new, list(servers)
        for up in started:
            up.start()
        gone = [up for name, up in old.items() if new.get(name) is not up]
        for up in gone:
            self._retire(up)
        if old or gone:
            log.info("mcp: servers %s (started %s, retired %s)", ", ".join(new) or "none",
                     ", ".join(u.spec.name for u in started) or "none", ", ".join(u.spec.name for u in gone) or "none")

    def _build(self, spec: McpServer) -> Upstream:
        if spec.stdio:
            return StdioUpstream(spec, StdioServer(spec, self._cfg, self._sandbox), self._on_notice)
        return HttpUpstream(spec, _bound(self._cfg), self._on_notice, self._mint)

    def _retire(self, up: Upstream) -> None:
        task = asyncio.get_running_loop().create_task(up.retire(), name=f"mcp-retire-{up.spec.name}")
        self._leaving[task] = up
        task.add_done_callback(lambda t: self._leaving.pop(t, None))

    async def close(self) -> None:
        leaving = list(self._leaving.values())
        for task in list(self._leaving):
            task.cancel()
        await asyncio.gather(*(u.close() for u in [*self.by_name.values(), *leaving]), return_exceptions=True)


def _bound(cfg: Mcp) -> int:
    """The largest answer read from a server: a result's JSON may be several times what reaches the caller
    (the text again as structured content, escapes, fields dropped), and lists are longer than results."""
    return 4 * cfg.max_result_bytes + (1 << 20)
