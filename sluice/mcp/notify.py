"""The server-to-client streams of the MCP endpoints: ``GET /mcp`` and ``GET /mcp/{server}`` (Streamable HTTP).

A caller with a session opens one with ``GET`` (``Accept: text/event-stream``, its ``Mcp-Session-Id``); it
carries ``notifications/tools/list_changed`` (and the resources and prompts ones) as SSE events, and a
comment every ``mcp.streams.keepalive_s`` while quiet. What is sent:

* what an upstream server sends sluice on its own session (relayed by ``upstreams.py``): to the streams of
  that server's path and of the federated ``/mcp``;
* ``notifications/resources/updated`` a server sends on sluice's session: to the streams of exactly the sessions
  subscribed to that URI and still granted it (``subscriptions.py`` says which), on this replica and, with
  ``fanout`` (Redis), on the others (``fanout.py``);
* sluice's own ``tools/list_changed`` when what a caller may see changes: a new active policy version (the
  tool registry and the pins are in it; watched once a second) and a tool quarantined by its definition
  changing (``quarantined``), on every stream (a version) or that server's (a quarantine).

A list_changed notification only says "list again": the list a caller then gets is decided as always, and an
update names only a URI the caller subscribed to and may read, so a stream carries no tool, resource or prompt
and nothing of another identity. Pending notifications of one stream are coalesced (each one once).

Bounds: ``mcp.streams.per_identity`` streams open at once for one identity (beyond: 429 with Retry-After)
and ``mcp.streams.total`` on this replica (beyond: 503), both as JSON-RPC errors. A stream ends when its
session does (a DELETE on this replica at once; an end or expiry seen at the next keep-alive), when the
caller leaves, and at shutdown (``close``: every stream ends cleanly before the listener drains).

Each replica relays what its own upstream sessions receive to its own streams; see the README for what a
caller on another replica sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import msgspec

from ..core.exchange import StreamReply
from ..core.mcp_config import McpStreams
from .fanout import Fanout
from .jsonrpc import Refusal
from .session import Sessions

log = logging.getLogger("sluice.mcp")
TOOLS_CHANGED = "notifications/tools/list_changed"
LIST_CHANGED = frozenset({TOOLS_CHANGED, "notifications/resources/list_changed", "notifications/prompts/list_changed"})
UPDATED = "notifications/resources/updated"
TOO_MANY_STREAMS = -32014
FEDERATED = "*"  # the session binding of /mcp (as gateway.FEDERATED)
_KIND_CHANGED = {"tool": TOOLS_CHANGED, "prompt": "notifications/prompts/list_changed",
                 "template": "notifications/resources/list_changed"}
WATCH_S = 1.0  # how often the active policy version is looked at


def message(method: str, params: dict[str, Any] | None = None) -> bytes:
    """A notification as JSON-RPC (what an SSE event carries)."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        body["params"] = params
    return msgspec.json.encode(body)


def event(data: bytes) -> bytes:
    return b"event: message\ndata: " + data + b"\n\n"


class Stream:
    """One open GET stream: whose, on which path, what waits to be sent."""

    __slots__ = ("identity_id", "server", "session_id", "digest", "pending", "wake", "closed")

    def __init__(self, identity_id: str, server: str, session_id: str) -> None:
        self.identity_id, self.server, self.session_id = identity_id, server, session_id
        self.digest = Sessions.digest(session_id)  # as subscriptions and other replicas name the session
        self.pending: dict[bytes, None] = {}  # notifications (JSON-RPC), in order, each once
        self.wake = asyncio.Event()
        self.closed = False

    def push(self, method: str, params: dict[str, Any] | None = None) -> None:
        self.pending[message(method, params)] = None
        self.wake.set()

    def end(self) -> None:
        self.closed = True
        self.wake.set()


class Streams:
    """Every open stream of this replica, and what is published to them."""

    def __init__(self, cfg: McpStreams, active: Callable[[], Any] | None = None) -> None:
        self._cfg = cfg
        self._active = active  # the active policy version: a new one is a tools/list_changed for everyone
        self._open: set[Stream] = set()
        self._by_identity: dict[str, int] = {}
        self._watch: asyncio.Task | None = None
        self._closing = False
        # (server, uri) -> the sessions (id digests) subscribed to it, still granted it (``Subscriptions.subscribed``)
        self.subscribed: Callable[[str, str], Iterable[str]] | None = None
        self.fanout: Fanout | None = None  # the other replicas' streams (``fanout.py``)

    @property
    def count(self) -> int:
        return len(self._open)

    @property
    def offered(self) -> bool:
        """False when configured off (``per_identity`` or ``total`` 0): GET is then 405."""
        return self._cfg.per_identity > 0 and self._cfg.total > 0

    def open(self, identity_id: str, server: str, session_id: str,
             still_valid: Callable[[], Awaitable[bool]]) -> StreamReply:
        """A stream for this caller's session, or the refusal: too many of its own (429), too many here (503)."""
        if self._closing:
            raise Refusal(TOO_MANY_STREAMS, "The gateway is shutting down; open the stream on another replica.",
                          "shutting_down", 503, {"Retry-After": "1"})
        if self._by_identity.get(identity_id, 0) >= self._cfg.per_identity:
            raise Refusal(TOO_MANY_STREAMS, f"You have {self._cfg.per_identity} MCP streams open here "
                          "(mcp.streams.per_identity); close one first.", "too_many_streams", 429, {"Retry-After": "5"})
        if len(self._open) >= self._cfg.total:
            raise Refusal(TOO_MANY_STREAMS, "This gateway has as many MCP streams open as it allows (mcp.streams.total);"
                          " retry shortly.", "streams_full", 503, {"Retry-After": "5"})
        stream = Stream(identity_id, server, session_id)
        self._open.add(stream)
        self._by_identity[identity_id] = self._by_identity.get(identity_id, 0) + 1
        self._start_watch()
        chunks = self._events(stream, still_valid)
        return StreamReply(chunks, headers={"Cache-Control": "no-cache"}, abandon=lambda: self._drop(stream))

    async def _events(self, stream: Stream, still_valid: Callable[[], Awaitable[bool]]) -> AsyncIterator[bytes]:
        try:
            yield b": sluice mcp stream\n\n"
            while not stream.closed:
                if not stream.pending:
                    stream.wake.clear()
                    try:
                        await asyncio.wait_for(stream.wake.wait(), self._cfg.keepalive_s)
                    except asyncio.TimeoutError:
                        if not await still_valid():  # the session ended elsewhere, or expired
                            return
                        yield b": keep-alive\n\n"
                        continue
                if stream.pending:
                    sent, stream.pending = list(stream.pending), {}
                    yield b"".join(event(m) for m in sent)
        finally:
            self._drop(stream)

    def _drop(self, stream: Stream) -> None:
        if stream in self._open:
            self._open.discard(stream)
            left = self._by_identity.get(stream.identity_id, 1) - 1
            if left > 0:
                self._by_identity[stream.identity_id] = left
            else:
                self._by_identity.pop(stream.identity_id, None)

    def publish(self, server: str | None, method: str) -> None:
        """Send a notification to the streams of ``server``'s path and of ``/mcp`` (None: to every stream)."""
        for stream in self._open:
            if server is None or stream.server in (server, FEDERATED):
                stream.push(method)

    def relay(self, server: str, method: str, params: dict[str, Any] | None = None) -> None:
        """What an upstream server sent on its session: its list_changed notifications go on, and an update of a
        resource to the sessions subscribed to it (``subscribed``); others do not."""
        if method in LIST_CHANGED:
            self.publish(server, method)
        elif method == UPDATED and self.subscribed is not None and isinstance((params or {}).get("uri"), str):
            uri = params["uri"]  # type: ignore[index]
            digests = list(self.subscribed(server, uri))
            if digests:
                self.updated(digests, uri)
                if self.fanout is not None:  # their streams may be on other replicas
                    self.fanout.publish({"k": "updated", "d": digests, "u": uri})

    def updated(self, digests: Iterable[str], uri: str) -> None:
        """Tell these sessions' streams on this replica that the resource ``uri`` changed."""
        wanted = set(digests)
        for stream in self._open:
            if stream.digest in wanted:
                stream.push(UPDATED, {"uri": uri})

    def heard(self, message: dict[str, Any]) -> None:
        """An update another replica heard, for the sessions it names (``fanout.py``)."""
        digests, uri = message.get("d"), message.get("u")
        if message.get("k") == "updated" and isinstance(digests, list) and isinstance(uri, str):
            self.updated((d for d in digests if isinstance(d, str)), uri)

    def quarantined(self, server: str, kind: str = "tool") -> None:
        """A definition of this server was hidden because it changed (or is not pinned): a tool, a prompt, or a
        resource template."""
        self.publish(server, _KIND_CHANGED.get(kind, TOOLS_CHANGED))

    def end_session(self, session_id: str) -> None:
        """The session was ended (DELETE): its streams end now."""
        for stream in [s for s in self._open if s.session_id == session_id]:
            stream.end()

    def _start_watch(self) -> None:
        if self._watch is None and self._active is not None and not self._closing:
            self._watch = asyncio.get_running_loop().create_task(self._watch_policy(), name="mcp-streams-policy")

    async def _watch_policy(self) -> None:
        """A new active policy version (a change set applied here or seen from another replica) may change what
        each caller sees: tell every stream."""
        assert self._active is not None
        seen = getattr(self._active(), "version", None)
        while True:
            await asyncio.sleep(WATCH_S)
            now = getattr(self._active(), "version", None)
            if now != seen:
                seen = now
                log.info("mcp: policy version %s is active; telling %d open streams", now, len(self._open))
                self.publish(None, TOOLS_CHANGED)

    async def close(self) -> None:
        """Shutdown: refuse new streams and end every open one (each ends its response cleanly)."""
        self._closing = True
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
        for stream in list(self._open):
            stream.end()
        for _ in range(100):  # let the listener write each stream's end before it drains
            if not self._open:
                break
            await asyncio.sleep(0.01)
