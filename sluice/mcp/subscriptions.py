"""Resource subscriptions through the MCP gateway: which callers' sessions asked for which resource's updates.

sluice holds one session per server, shared by every caller (``upstreams.py``), so a server sees sluice subscribed,
never the callers. This table says which of the callers' sessions subscribed to which resource (server, URI):
sluice sends ``resources/subscribe`` on its own session when the first caller's session subscribes to a URI and
``resources/unsubscribe`` when the last one leaves it: by ``resources/unsubscribe``, by its session's DELETE
(``end_session``), or by its session having ended on another replica or expired (found by ``sweep``, every
``SWEEP_S``). When sluice has had to make a new session with a server (it restarted and forgot the old one), the
sweep subscribes the new one to every URI the table holds of that server. A ``notifications/resources/updated`` that a server sends on sluice's session goes to the GET
streams of exactly the sessions subscribed to that URI of that server whose identity may still read it under the
active policy, judged when it is relayed (``subscribed``): a grant taken away stops the relays at once.

The table is this replica's memory, as its upstream sessions are: the replica that took a subscription holds it
and hears its updates. With ``fanout`` (Redis, ``fanout.py``) those updates reach the session's stream on any
replica, and an unsubscribe or DELETE received by another replica reaches this one; without it, a subscription is
heard only by a stream on the replica that took it (see the README, "Resource subscriptions"). Sessions are keyed
by the SHA-256 of their id (``Sessions.digest``), as the ended list and the fan-out know them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from .fanout import Fanout
from .jsonrpc import Refusal
from .session import Sessions
from .upstreams import Upstream, Upstreams

log = logging.getLogger("sluice.mcp")
SWEEP_S = 5.0  # how often sessions holding subscriptions are checked for an end on another replica, or expiry
PER_SESSION = 100  # subscriptions one session may hold
TOTAL = 100_000  # subscriptions on this replica, every session together
TOO_MANY = -32013  # as the MCP limits' refusals
Key = tuple[str, str]  # (server, URI)


class Subscriber:
    """A session subscribed to a resource: which, whose, on which path (for the ended check), until when."""

    __slots__ = ("session_id", "digest", "identity_id", "identity_name", "team", "path", "expires")

    def __init__(self, session_id: str, identity_id: str, identity_name: str, team: str | None, path: str,
                 expires: float) -> None:
        self.session_id, self.digest = session_id, Sessions.digest(session_id)
        self.identity_id, self.identity_name, self.team, self.path, self.expires = \
            identity_id, identity_name, team, path, expires


class Subscriptions:
    """This replica's subscription table, and the upstream subscriptions it keeps in step with it.

    ``may_read(server, uri, identity_name, team)``: the active policy's resource grant (``ContentAccess.resource``);
    ``still_open(subscriber)``: whether its session is neither ended (on any replica) nor expired."""

    def __init__(self, upstreams: Upstreams, may_read: Callable[[str, str, str, str | None], bool],
                 still_open: Callable[[Subscriber], Awaitable[bool]]) -> None:
        self._upstreams = upstreams
        self._may_read = may_read
        self._still_open = still_open
        self._by_key: dict[Key, dict[str, Subscriber]] = {}  # (server, uri) -> session digest -> its subscriber
        self._by_session: dict[str, set[Key]] = {}
        self._count = 0
        self._locks: dict[str, asyncio.Lock] = {}  # per server: one upstream (un)subscribe at a time
        self._generation: dict[Key, int] = {}  # the upstream session (``Upstream.generation``) that subscribed
        self._sweep: asyncio.Task | None = None
        self.fanout: Fanout | None = None  # other replicas: told of an unsubscribe or an end taken here

    def _lock(self, server: str) -> asyncio.Lock:
        lock = self._locks.get(server)
        if lock is None:
            lock = self._locks[server] = asyncio.Lock()
        return lock

    async def subscribe(self, sub: Subscriber, owner: Upstream, uri: str) -> None:
        """Subscribe this session to ``uri`` of ``owner`` (again: nothing changes); the first to it subscribes
        sluice upstream, whose failure is the caller's (raised as the upstream raised it)."""
        key, digest = (owner.spec.name, uri), sub.digest
        held = self._by_session.get(digest, set())
        if key in held:
            return
        if len(held) >= PER_SESSION:
            raise Refusal(TOO_MANY, f"This session holds {PER_SESSION} resource subscriptions; unsubscribe one first.",
                          "too_many_subscriptions")
        if self._count >= TOTAL:
            raise Refusal(TOO_MANY, "This gateway holds as many resource subscriptions as it allows; retry later.",
                          "subscriptions_full", data={"retry_after": 60})
        async with self._lock(key[0]):
            sessions = self._by_key.get(key)
            if not sessions:
                await owner.subscribe(uri)
                self._generation[key] = owner.generation()
                sessions = self._by_key[key] = {}
            if digest not in sessions:
                sessions[digest] = sub
                self._by_session.setdefault(digest, set()).add(key)
                self._count += 1
        self._start_sweep()

    async def unsubscribe(self, digest: str, server: str | None, uri: str, share: bool = True) -> None:
        """This session's subscription to ``uri`` (of ``server``; None: whichever it holds) ends, here and (``share``)
        on the replica that holds it; none: nothing. ``digest``: the session id's digest."""
        for key in [k for k in self._by_session.get(digest, ()) if k[1] == uri and server in (None, k[0])]:
            await self._leave(digest, key)
        if share and self.fanout is not None:
            self.fanout.publish({"k": "leave", "d": digest, "s": server, "u": uri})

    async def end_session(self, digest: str, share: bool = True) -> None:
        """The session ended (DELETE, or found ended or expired): every subscription of it ends, here and (``share``)
        on every replica. ``digest``: the session id's digest."""
        for key in list(self._by_session.get(digest, ())):
            await self._leave(digest, key)
        if share and self.fanout is not None:
            self.fanout.publish({"k": "end", "d": digest})

    async def heard(self, message: dict) -> None:
        """An unsubscribe or an end another replica received (``fanout.py``)."""
        digest = message.get("d")
        if not isinstance(digest, str) or digest not in self._by_session:
            return
        if message.get("k") == "end":
            await self.end_session(digest, share=False)
        elif message.get("k") == "leave" and isinstance(message.get("u"), str):
            server = message.get("s")
            await self.unsubscribe(digest, server if isinstance(server, str) else None, message["u"], share=False)

    async def _leave(self, digest: str, key: Key) -> None:
        async with self._lock(key[0]):
            held = self._by_session.get(digest)
            if held is not None:
                held.discard(key)
                if not held:
                    del self._by_session[digest]
            sessions = self._by_key.get(key)
            if sessions is None or sessions.pop(digest, None) is None:
                return
            self._count -= 1
            if sessions:
                return
            del self._by_key[key]
            self._generation.pop(key, None)
            up = self._upstreams.get(key[0])
            if up is None:
                return
            try:  # the last one left: sluice leaves too (a failure leaves the server sending what nobody hears)
                await up.subscribe(key[1], on=False)
            except Exception as exc:  # noqa: BLE001 - logged; updates for a URI nobody holds are dropped anyway
                log.warning("mcp: server %s: resources/unsubscribe failed (%s)", key[0], type(exc).__name__)

    def subscribed(self, server: str, uri: str) -> Iterator[str]:
        """The sessions (digests) to tell that ``uri`` of ``server`` changed: subscribed, unexpired, still granted it."""
        sessions = self._by_key.get((server, uri))
        if not sessions:
            return
        now = time.time()
        for digest, sub in list(sessions.items()):
            if sub.expires > now and self._may_read(server, uri, sub.identity_name, sub.team):
                yield digest

    def count(self, server: str, uri: str) -> int:
        return len(self._by_key.get((server, uri), ()))

    def _start_sweep(self) -> None:
        if self._sweep is None or self._sweep.done():
            self._sweep = asyncio.get_running_loop().create_task(self._sweeping(), name="mcp-subscriptions-sweep")

    async def _sweeping(self) -> None:
        while self._by_session:
            await asyncio.sleep(SWEEP_S)
            await self.sweep()

    async def sweep(self) -> None:
        """End the subscriptions of sessions that have expired or were ended on another replica; subscribe a server's
        new session (it restarted) to what the table holds of it."""
        await self._resubscribe()
        for digest in list(self._by_session):
            keys = self._by_session.get(digest)
            sub = self._by_key.get(next(iter(keys)), {}).get(digest) if keys else None
            if sub is not None and sub.expires > time.time() and await self._still_open(sub):
                continue
            await self.end_session(digest, share=False)  # every replica finds it so

    async def _resubscribe(self) -> None:
        for key in list(self._by_key):
            up = self._upstreams.get(key[0])
            if up is None or up.generation() == self._generation.get(key):
                continue
            async with self._lock(key[0]):
                if key not in self._by_key:
                    continue
                try:
                    await up.subscribe(key[1])
                except Exception as exc:  # noqa: BLE001 - tried again at the next sweep
                    log.warning("mcp: server %s: resources/subscribe on its new session failed (%s)", key[0],
                                type(exc).__name__)
                    continue
                self._generation[key] = up.generation()
                log.info("mcp: server %s: its new session is subscribed again to a resource callers hold", key[0])

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            await asyncio.gather(self._sweep, return_exceptions=True)
