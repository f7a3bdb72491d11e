"""sluice's own MCP client for a Streamable HTTP server: JSON-RPC over POST on sluice's native connection pool.

The ``mcp`` SDK's client was the largest share of sluice's CPU per ``tools/call`` (anyio memory streams and
task groups per message, pydantic models of every message, httpx2: ~35-40% of the samples holding the GIL;
bench/README.md), so HTTP servers are spoken to by this module instead; stdio servers stay on the SDK.

What it does of the transport (MCP 2025-03-26 to 2025-11-25, the initialize handshake):

* ``initialize`` once (sluice's own capabilities: none), then ``notifications/initialized``; the server's
  ``Mcp-Session-Id`` (if it gives one) and the negotiated version (``MCP-Protocol-Version``) go on every
  request after. A 404 to a request carrying that session id means the server forgot it (it restarted,
  or expired it): the session is made again and the request sent once more.
* Each request is one POST accepting ``application/json`` and ``text/event-stream``; the answer is read
  from a JSON body, or from the SSE stream up to the response with this request's id (notifications
  before it go to ``on_message``; a request of the server is answered: ``ping`` with ``{}``, anything
  else ``-32601``, since sluice offers the server no capability).
* The server's JSON-RPC error is raised as the SDK's ``MCPError`` (the gateway relays it); a connection
  that breaks is tried once more on a fresh one; no answer within the server's ``timeout_s`` is
  ``UpstreamTimeout`` (``mcp_upstream_timeout``); an answer over ``max_bytes`` is refused whole.
* Replies are decoded once by msgspec into typed structs (``framing.Reply``); a ``tools/call`` result is
  checked against the shape MCP gives it (``framing.TOOL_RESULT``) before the gateway reads it.
* ``listen()`` holds the server-to-client stream (GET) that the notifications a server sends on its own
  arrive on (``notifications/tools/list_changed`` and the like).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, LATEST_HANDSHAKE_VERSION

from ..core.errors import GatewayError, UpstreamError, UpstreamTimeout
from ..upstream.connection import Cut, Stalled, TooLarge
from ..upstream.pool import Pool, PoolTimeout
from ..upstream.tls import tls_context
from .framing import ANY, REPLY, TOOL_RESULT, McpConnection, Reply, SseEvents, ToolResult

log = logging.getLogger("sluice.mcp")
METHOD_NOT_FOUND = -32601
CLIENT_INFO = {"name": "sluice", "version": "0.1.0"}
POOL_SIZE = 64  # connections to one server at once (calls beyond wait for one, up to the call's timeout)
IDLE_S = 4.0  # below uvicorn's 5 s keep-alive, so a kept connection is rarely one the server is closing
LISTEN_BACKOFF_S = (0.5, 30.0)


class Invalid(UpstreamError):
    code = "mcp_upstream_invalid"


class TooLargeAnswer(UpstreamError):
    code = "mcp_result_too_large"


class _Broken(Exception):
    """The connection failed before the answer was whole: worth one more try on a fresh one."""


class _SessionGone(Exception):
    """404 to a request carrying our session id: the server no longer knows the session."""


def _visible_ascii(value: str) -> bool:
    return 0 < len(value) <= 1024 and all(0x21 <= ord(c) <= 0x7E for c in value)


class HttpClient:
    """One MCP session with one Streamable HTTP server, shared by every caller of the gateway.

    ``authorization()`` is the value of the ``Authorization`` header for the next request (sluice's own credential
    for this server, asked per request so a renewed one is used; None: none is sent): nothing of a caller's
    request is sent.
    ``on_message(method, params)`` gets each notification the server sends (on a POST's stream or on the
    GET stream of ``listen``)."""

    def __init__(self, name: str, url: str, timeout_s: float, max_bytes: int,
                 authorization: Callable[[], str | None] | None = None,
                 on_message: Callable[[str, dict[str, Any] | None], None] | None = None) -> None:
        self.name = name
        u = urlsplit(url)
        tls = u.scheme == "https"
        host = u.hostname or "127.0.0.1"
        port = u.port or (443 if tls else 80)
        path = (u.path or "/") + (f"?{u.query}" if u.query else "")
        authority = host if port == (443 if tls else 80) else f"{host}:{port}"
        if ":" in host:
            authority = f"[{host}]" if port == (443 if tls else 80) else f"[{host}]:{port}"
        self._post = (f"POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n"
                      f"Accept: application/json, text/event-stream\r\n").encode("latin-1")
        self._get = (f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n"
                     f"Cache-Control: no-cache\r\n").encode("latin-1")
        self._delete = f"DELETE {path} HTTP/1.1\r\nHost: {authority}\r\n".encode("latin-1")
        self._authorization = authorization
        self._auth_value: str | None = None
        self._auth_line = b""  # the Authorization line of ``_auth_value``, made once per value
        self._session = b""  # the Mcp-Session-Id and MCP-Protocol-Version lines, once initialized
        self.session_id: str | None = None
        self.protocol: str | None = None
        self.capabilities: dict[str, Any] = {}
        self._timeout = timeout_s
        self._max = max_bytes
        self._on_message = on_message
        ssl_context = tls_context(None) if tls else None
        tick = min(1.0, max(0.01, timeout_s / 8))  # a timeout fires at most an eighth late (as the model upstreams)
        self._pool = Pool(host, port, ssl_context=ssl_context, limit=POOL_SIZE, connect_timeout=min(10.0, timeout_s),
                          pool_timeout=timeout_s, idle_timeout=IDLE_S, tick=tick, protocol=McpConnection)
        self._listen_at = (host, port, ssl_context, tick)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._ready = False
        self._generation = 0  # sessions made so far: a 404 re-initializes only the session it was seen on
        self._background: set[asyncio.Task] = set()
        self._closed = False

    @property
    def generation(self) -> int:
        """How many sessions were made with the server so far (a new one forgets what the last had subscribed)."""
        return self._generation

    # -- the requests ------------------------------------------------------------------

    async def request(self, method: str, params: dict[str, Any] | None = None) -> msgspec.Raw:
        """The result (raw JSON) of one request; ``MCPError`` for the server's own JSON-RPC error."""
        for attempt in (0, 1):
            generation = await self._ensure()
            try:
                return await self._send(method, params)
            except _SessionGone:
                log.warning("mcp: server %s: the session is gone (404); initializing a new one", self.name)
                if attempt:
                    raise UpstreamError(f"MCP server {self.name} keeps losing the session.",
                                        code="mcp_upstream_error") from None
                self._forget(generation)
            except _Broken as exc:
                if attempt:
                    raise UpstreamError(f"MCP server {self.name} failed on {method}.", code="mcp_upstream_error") from None
                log.warning("mcp: server %s: %s failed (%s); trying once more on a new connection", self.name,
                            method, exc.args[0] if exc.args else "broken")
        raise AssertionError("unreachable")

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        raw = await self.request("tools/call", {"name": name, "arguments": arguments})
        try:
            shape = TOOL_RESULT.decode(raw)
            body = ANY.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            raise Invalid(f"The answer of MCP server {self.name} to tools/call is not a tool result.") from None
        return ToolResult(body, len(raw), shape.isError)

    async def _ensure(self) -> int:
        if self._ready:
            return self._generation
        async with self._lock:
            if not self._ready:
                await self._initialize()
            return self._generation

    def _forget(self, generation: int) -> None:
        if generation == self._generation:
            self._ready = False

    async def _initialize(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._pool.start()
        self._session, self.session_id = b"", None
        raw = None
        for attempt in (0, 1):
            try:
                raw = await self._send("initialize", {"protocolVersion": LATEST_HANDSHAKE_VERSION, "capabilities": {},
                                                      "clientInfo": CLIENT_INFO}, initialize=True)
                break
            except _Broken as exc:
                if attempt:
                    log.warning("mcp: server %s: handshake failed (%s)", self.name, exc.args[0] if exc.args else "")
                    raise UpstreamError(f"MCP server {self.name} is unreachable.", code="mcp_upstream_error") from None
            except _SessionGone:
                raise UpstreamError(f"MCP server {self.name} refused the handshake.", code="mcp_upstream_error") from None
        try:
            result = ANY.decode(raw)  # type: ignore[arg-type]
            version = result["protocolVersion"]
        except (msgspec.DecodeError, KeyError, TypeError):
            raise Invalid(f"MCP server {self.name} answered initialize with something that is not MCP.") from None
        if version not in HANDSHAKE_PROTOCOL_VERSIONS:
            raise Invalid(f"MCP server {self.name} speaks protocol {str(version)[:32]!r}, which sluice does not.")
        self.protocol = version
        caps = result.get("capabilities")
        self.capabilities = caps if isinstance(caps, dict) else {}
        sid = self.session_id
        self._session = ((f"Mcp-Session-Id: {sid}\r\n" if sid else "") + f"MCP-Protocol-Version: {version}\r\n").encode()
        await self._notify("notifications/initialized", None)
        self._generation += 1
        self._ready = True

    def _auth(self) -> bytes:
        """The credential's header line for the next request (raises what the credential raises: fail closed)."""
        if self._authorization is None:
            return b""
        value = self._authorization()
        if value is None:
            return b""
        if value != self._auth_value:
            if "\r" in value or "\n" in value:
                raise UpstreamError(f"MCP server {self.name}: its credential is not a header value.",
                                    code="mcp_upstream_error")
            self._auth_value, self._auth_line = value, f"Authorization: {value}\r\n".encode("latin-1")
        return self._auth_line

    def _request_bytes(self, head: bytes, body: bytes) -> bytes:
        return b"".join((head, self._auth(), self._session, b"Content-Length: %d\r\n\r\n" % len(body), body))

    async def _exchange(self, request: bytes, deadline: float) -> McpConnection:
        """Send on a pooled connection and wait for the response head."""
        pool = self._pool
        conn = pool.take_idle()
        if conn is None:
            try:
                conn = await pool.acquire()
            except BaseException as exc:
                raise self._failure(exc) from None
        conn.send(request, self._timeout, deadline)
        try:
            await conn.head()
        except BaseException as exc:
            pool.release(conn)
            raise self._failure(exc) from None
        return conn  # type: ignore[return-value]

    def _failure(self, exc: BaseException) -> BaseException:
        if isinstance(exc, (Stalled, PoolTimeout, asyncio.TimeoutError)):
            return UpstreamTimeout(f"MCP server {self.name} did not answer in time.", code="mcp_upstream_timeout")
        if isinstance(exc, TooLarge):
            return TooLargeAnswer(f"The answer of MCP server {self.name} is over the gateway's bound of {self._max}"
                                  " bytes (mcp.max_result_bytes); it was not passed on.")
        if isinstance(exc, (Cut, OSError)):
            return _Broken(type(exc).__name__)
        return exc

    async def _read_all(self, conn: McpConnection) -> bytes:
        data = conn.take_body()  # nearly always: the whole answer came with its head
        if data is not None:
            self._pool.release(conn)
            if len(data) > self._max:
                raise self._failure(TooLarge())
            return data
        try:
            pieces = await conn.read_all(self._max)
        except Exception as exc:
            raise self._failure(exc) from None
        finally:
            self._pool.release(conn)
        return b"".join(pieces)

    async def _send(self, method: str, params: dict[str, Any] | None, initialize: bool = False) -> msgspec.Raw:
        loop = self._loop
        assert loop is not None
        rid = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": rid, "method": method}
        if params is not None:
            message["params"] = params
        conn = await self._exchange(self._request_bytes(self._post, msgspec.json.encode(message)),
                                    loop.time() + self._timeout)
        status, ctype = conn.status, conn.content_type
        if initialize and status == 200:
            sid = conn.session_id
            if sid is not None and not _visible_ascii(sid):
                conn.close()
                self._pool.release(conn)
                raise Invalid(f"MCP server {self.name} gave a session id that is not visible ASCII.")
            self.session_id = sid
        if status == 200 and ctype.startswith(b"text/event-stream"):
            reply = await self._from_stream(conn, rid)
        else:
            data = await self._read_all(conn)
            if status == 404 and self.session_id is not None and not initialize:
                raise _SessionGone()
            reply = self._decode(data, status, ctype)
            if reply is None:
                raise Invalid(f"MCP server {self.name} answered {method} with HTTP {status} and no JSON-RPC response.")
        if reply.error is not None:
            raise MCPError(reply.error.code, reply.error.message, reply.error.data)
        if reply.id != rid or not reply.result:
            raise Invalid(f"The answer of MCP server {self.name} to {method} is not a JSON-RPC response to it.")
        return reply.result

    def _decode(self, data: bytes, status: int, ctype: bytes) -> Reply | None:
        """A JSON body's JSON-RPC response (a server may answer an error with a 4xx or 5xx and a JSON-RPC error)."""
        if not ctype.startswith(b"application/json"):
            if status == 200:
                return None
            raise UpstreamError(f"MCP server {self.name} answered HTTP {status}.", code="mcp_upstream_error")
        try:
            reply = REPLY.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            if status == 200:
                return None
            raise UpstreamError(f"MCP server {self.name} answered HTTP {status}.", code="mcp_upstream_error") from None
        if status != 200 and reply.error is None:
            raise UpstreamError(f"MCP server {self.name} answered HTTP {status}.", code="mcp_upstream_error")
        return reply

    async def _from_stream(self, conn: McpConnection, rid: int) -> Reply:
        """Read an SSE answer up to the response to ``rid``; what follows it is read off in the background."""
        events = SseEvents(self._max)
        room = self._max
        try:
            while True:
                piece = await conn.read()
                if not piece:
                    raise _Broken("the stream ended without the response")
                room -= len(piece)
                if room < 0:
                    raise TooLarge()
                for data in events.feed(piece):
                    reply = self._message(data)
                    if reply is not None and reply.method is None and reply.id == rid:
                        rest = conn.take_body()  # the stream's end is usually here already
                        if rest is not None:
                            for more in events.feed(rest):
                                self._message(more)
                            self._pool.release(conn)
                        else:
                            self._spawn(self._drain(conn, events))
                        return reply
        except BaseException as exc:
            conn.close()
            self._pool.release(conn)
            if isinstance(exc, Exception):
                raise self._failure(exc) from None
            raise

    async def _drain(self, conn: McpConnection, events: SseEvents) -> None:
        """The rest of an SSE answer after its response (the server should end it there), then the connection back."""
        try:
            while piece := await conn.read():
                for data in events.feed(piece):
                    self._message(data)
        except Exception:  # noqa: BLE001 - the answer was had; the connection is dropped
            conn.close()
        finally:
            self._pool.release(conn)

    def _message(self, data: bytes) -> Reply | None:
        """One message of a stream: a response is returned; a notification goes to ``on_message``; a request
        of the server is answered."""
        try:
            reply = REPLY.decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            log.warning("mcp: server %s sent a stream event that is not JSON-RPC; dropped", self.name)
            return None
        if reply.method is None:
            return reply
        if reply.id is None:
            if self._on_message is not None:
                try:
                    self._on_message(reply.method, reply.params)
                except Exception:  # noqa: BLE001 - a listener's failure is not the call's
                    log.exception("mcp: server %s: handling %s failed", self.name, reply.method[:64])
        else:
            answer: dict[str, Any] = {"jsonrpc": "2.0", "id": reply.id}
            if reply.method == "ping":
                answer["result"] = {}
            else:
                answer["error"] = {"code": METHOD_NOT_FOUND, "message": "sluice offers MCP servers no client features."}
            self._spawn(self._post_message(answer))
        return None

    async def _post_message(self, message: dict[str, Any]) -> None:
        try:
            await self._post_only(message)
        except Exception as exc:  # noqa: BLE001 - an answer to the server's own request, best effort
            log.warning("mcp: server %s: answering its request failed (%s)", self.name, type(exc).__name__)

    async def _notify(self, method: str, params: dict[str, Any] | None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        for attempt in (0, 1):
            try:
                return await self._post_only(message)
            except _SessionGone:
                raise UpstreamError(f"MCP server {self.name} refused {method}.", code="mcp_upstream_error") from None
            except _Broken:
                if attempt:
                    raise UpstreamError(f"MCP server {self.name} failed on {method}.", code="mcp_upstream_error") from None

    async def _post_only(self, message: dict[str, Any]) -> None:
        """POST a notification or a response: the server answers 202 and nothing else."""
        loop = self._loop
        assert loop is not None
        conn = await self._exchange(self._request_bytes(self._post, msgspec.json.encode(message)),
                                    loop.time() + self._timeout)
        status = conn.status
        await self._read_all(conn)
        if status == 404 and self.session_id is not None:
            raise _SessionGone()
        if status >= 300:
            raise UpstreamError(f"MCP server {self.name} answered HTTP {status} to a notification.",
                                code="mcp_upstream_error")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- the server's own stream -----------------------------------------------------------

    async def listen(self) -> None:
        """Hold the GET stream the server sends notifications on, opening it again when it ends, until cancelled.
        Returns when the server offers none (405)."""
        delay = LISTEN_BACKOFF_S[0]
        while not self._closed:
            try:
                generation = await self._ensure()
                opened = await self._listen_once(generation)
                if opened is None:
                    return
                if opened:
                    delay = LISTEN_BACKOFF_S[0]
            except asyncio.CancelledError:
                raise
            except (GatewayError, MCPError, OSError, _Broken, _SessionGone, Cut, Stalled, TooLarge) as exc:
                log.info("mcp: server %s: its stream ended (%s); opening it again in %.1f s", self.name,
                         type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(LISTEN_BACKOFF_S[1], delay * 2)

    async def _listen_once(self, generation: int) -> bool | None:
        """One GET stream, read to its end: True if it opened, None if the server offers no stream (405)."""
        host, port, ssl_context, _ = self._listen_at
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(
            lambda: McpConnection(loop), host, port, ssl=ssl_context,
            server_hostname=host if ssl_context else None), min(10.0, self._timeout))
        try:
            conn.send(b"".join((self._get, self._auth(), self._session, b"\r\n")), float("inf"), float("inf"))
            await conn.head()
            if conn.status == 405:
                return None
            if conn.status == 404 and self.session_id is not None:
                self._forget(generation)
                return False
            if conn.status != 200 or not conn.content_type.startswith(b"text/event-stream"):
                log.info("mcp: server %s answered its stream with HTTP %d", self.name, conn.status)
                return False
            events = SseEvents(self._max)
            while piece := await conn.read():
                for data in events.feed(piece):
                    self._message(data)
            return True
        finally:
            conn.close()

    async def close(self) -> None:
        """End the session at the server (best effort, briefly) and close the connections."""
        self._closed = True
        for task in list(self._background):
            task.cancel()
        if self._ready and self.session_id is not None and self._loop is not None:
            try:
                conn = await asyncio.wait_for(self._exchange(
                    b"".join((self._delete, self._auth(), self._session, b"Content-Length: 0\r\n\r\n")),
                    self._loop.time() + 1.0), 1.0)
                await asyncio.wait_for(self._read_all(conn), 1.0)
            except (Exception, asyncio.TimeoutError):  # noqa: BLE001 - the server forgets it in time anyway
                pass
        self._ready = False
        self._pool.close()
