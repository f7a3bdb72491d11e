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
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import mcp.types as mt
from mcp import Client
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel, ValidationError

from ..core.errors import ConfigError, UpstreamError, UpstreamTimeout
from ..core.mcp_config import Mcp, McpServer, refusal, unrunnable
from .client import HttpClient, Invalid, ToolResult
from .credentials import Minter, ServerCredential
from .stdio import Sandbox, StdioServer, sandbox_for

log = logging.getLogger("sluice.mcp")
MAX_PAGES = 100  # a server that pages forever is cut off
Notice = Callable[[str, str, "dict[str, Any] | None"], None]  # (server, method, params) of a notification a server
# sent on sluice's session


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
