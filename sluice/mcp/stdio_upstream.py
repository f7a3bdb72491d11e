"""A stdio server sluice starts itself, called through the ``mcp`` SDK's client session (``StdioUpstream``):
started in its sandbox (``stdio.py``), its session held open by one task, started again when it dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import mcp.types as mt
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from ..core.errors import UpstreamError, UpstreamTimeout
from ..core.mcp_config import McpServer
from .stdio import StdioServer
from .upstream_server import MAX_PAGES, Notice, Upstream, log


@asynccontextmanager
async def _streams(streams: Any) -> AsyncIterator[Any]:
    """Streams already open, as the transport (an async context manager) that ``Client`` takes."""
    yield streams


async def _first(*waits: Any) -> None:
    """Return when the first of these awaitables does; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


class StdioUpstream(Upstream):
    """A server sluice starts itself, over the SDK's stdio client: its session opened on first use (or at start),
    held by a task of its own (anyio scopes are per task)."""

    def __init__(self, spec: McpServer, stdio: StdioServer, on_notice: Notice | None = None) -> None:
        super().__init__(spec, on_notice)  # a stdio server's credential is in its env
        self._stdio = stdio
        self._restart: asyncio.TimerHandle | None = None
        self._closed = False
        self._client: Client | None = None
        self._ready: asyncio.Future[Client] | None = None
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._made = 0  # sessions made so far (``generation``)

    def generation(self) -> int:
        return self._made

    async def _hold(self, ready: asyncio.Future[Client], stop: asyncio.Event) -> None:
        try:
            async with self._stdio.transport() as (streams, died), \
                    Client(_streams(streams), mode="legacy", cache=None, read_timeout_seconds=self.spec.timeout_s,
                           message_handler=self._message) as client:
                ready.set_result(client)
                await _first(stop.wait(), died.wait())
                if not stop.is_set():  # the process is gone: start it again, after a bounded backoff
                    self._restart_later()
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the session
            if not ready.done():
                ready.set_exception(exc if isinstance(exc, Exception) else ConnectionError("closed"))
            if not isinstance(exc, Exception):
                raise
        finally:
            self._client = None

    async def _message(self, message: Any) -> None:
        """What the SDK's session surfaces: a notification's method goes on (a transport fault is the session's)."""
        method = getattr(message, "method", None)
        if isinstance(method, str):
            params = getattr(message, "params", None)
            self._notice(method, params.model_dump(mode="json", by_alias=True, exclude_none=True)
                         if isinstance(params, BaseModel) else None)

    async def _session(self) -> Client:
        if self._client is not None and self._task is not None and not self._task.done():
            return self._client
        async with self._lock:
            if self._client is not None and self._task is not None and not self._task.done():
                return self._client
            ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
            self._stop = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._hold(ready, self._stop),
                                                                name=f"mcp-upstream-{self.spec.name}")
            try:
                self._client = await asyncio.wait_for(ready, self.spec.timeout_s)
                self._made += 1
            except asyncio.TimeoutError:
                await self._drop()
                raise UpstreamTimeout(f"MCP server {self.spec.name} did not answer the handshake in time.",
                                      code="mcp_upstream_timeout") from None
            except Exception as exc:
                await self._drop()
                log.warning("mcp: server %s: handshake failed: %s", self.spec.name, type(exc).__name__)
                raise UpstreamError(f"MCP server {self.spec.name} is unreachable.", code="mcp_upstream_error") from None
            return self._client

    def start(self) -> None:
        """Start the server now rather than at the first call (a failure is logged; calls retry it)."""
        if not self._closed:
            asyncio.get_running_loop().create_task(self._start(), name=f"mcp-start-{self.spec.name}")

    async def _start(self) -> None:
        self._restart = None
        try:
            await self._session()
        except Exception as exc:  # noqa: BLE001 - logged; the next start or call tries again
            log.warning("mcp: server %s did not start (%s)", self.spec.name, type(exc).__name__)
            self._restart_later()

    def _restart_later(self) -> None:
        if self._closed or self._restart is not None:
            return
        delay = self._stdio.backoff()
        log.warning("mcp: server %s exited; starting it again in %.1f s", self.spec.name, delay)
        self._restart = asyncio.get_running_loop().call_later(delay, self.start)

    async def _drop(self) -> None:
        task, self._task, self._client = self._task, None, None
        if self._stop is not None:
            self._stop.set()
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self, op: str, call: Any) -> Any:
        self._enter()
        try:
            return await self._attempts(op, call)
        finally:
            self._leave()

    async def _attempts(self, op: str, call: Any) -> Any:
        """One request on the shared session; a broken connection is rebuilt and the request tried once more."""
        for attempt in (0, 1):
            client = await self._session()
            try:
                return await asyncio.wait_for(call(client), self.spec.timeout_s)
            except MCPError:
                raise  # the server's own answer: the caller reads it
            except asyncio.TimeoutError:
                raise UpstreamTimeout(f"MCP server {self.spec.name} did not answer {op} in time.",
                                      code="mcp_upstream_timeout") from None
            except Exception as exc:
                log.warning("mcp: server %s: %s failed (%s); reconnecting", self.spec.name, op, type(exc).__name__)
                await self._drop()
                if attempt:
                    raise UpstreamError(f"MCP server {self.spec.name} failed on {op}.", code="mcp_upstream_error") from None
        raise AssertionError("unreachable")

    async def list_tools(self) -> list[mt.Tool]:
        async def pages(client: Client) -> list[mt.Tool]:
            out: list[mt.Tool] = []
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                page = await client.list_tools(cursor=cursor, cache_mode="refresh")
                out += page.tools
                cursor = page.next_cursor
                if not cursor:
                    break
            return out
        return await self._run("tools/list", pages)  # type: ignore[no-any-return]

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> mt.CallToolResult:
        return await self._run("tools/call", lambda c: c.call_tool(name, arguments))  # type: ignore[no-any-return]

    async def _all(self, op: str, page: Any, items: str) -> list[Any]:
        """Every item of a paged list (``page(client, cursor)``), at most 100 pages."""
        async def pages(client: Client) -> list[Any]:
            out: list[Any] = []
            cursor: str | None = None
            for _ in range(MAX_PAGES):
                got = await page(client, cursor)
                out += getattr(got, items)
                cursor = got.next_cursor
                if not cursor:
                    break
            return out
        return await self._run(op, pages)  # type: ignore[no-any-return]

    async def list_resources(self) -> list[mt.Resource]:
        return await self._all("resources/list", lambda c, k: c.list_resources(cursor=k, cache_mode="refresh"),
                               "resources")

    async def list_resource_templates(self) -> list[mt.ResourceTemplate]:
        return await self._all("resources/templates/list",
                               lambda c, k: c.list_resource_templates(cursor=k, cache_mode="refresh"), "resource_templates")

    async def list_prompts(self) -> list[mt.Prompt]:
        return await self._all("prompts/list", lambda c, k: c.list_prompts(cursor=k, cache_mode="refresh"), "prompts")

    async def read_resource(self, uri: str) -> mt.ReadResourceResult:
        return await self._run("resources/read", lambda c: c.read_resource(uri, cache_mode="refresh"))  # type: ignore[no-any-return]

    async def get_prompt(self, name: str, arguments: dict[str, str] | None) -> mt.GetPromptResult:
        return await self._run("prompts/get", lambda c: c.get_prompt(name, arguments))  # type: ignore[no-any-return]

    async def complete(self, ref: mt.PromptReference | mt.ResourceTemplateReference, argument: dict[str, str],
                       context: dict[str, str] | None) -> mt.CompleteResult:
        return await self._run("completion/complete", lambda c: c.complete(ref, argument, context))  # type: ignore[no-any-return]

    async def subscribe(self, uri: str, on: bool = True) -> None:
        method = "resources/subscribe" if on else "resources/unsubscribe"
        request = (mt.SubscribeRequest(params=mt.SubscribeRequestParams(uri=uri)) if on
                   else mt.UnsubscribeRequest(params=mt.UnsubscribeRequestParams(uri=uri)))
        # the SDK's subscribe_resource warns (the method leaves the protocol after 2026-07-28): sent as a plain request
        await self._run(method, lambda c: c.session.send_request(request, mt.EmptyResult))

    async def ping(self) -> None:
        await self._run("ping", lambda c: c.send_ping())

    async def close(self) -> None:
        self._closed = True
        if self._restart is not None:
            self._restart.cancel()
        await self._drop()
