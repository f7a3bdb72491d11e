"""MCP sessions sealed into their ids, so any replica sharing the pepper serves any request of a session.

A session id is AES-GCM of the session's state under a key derived from the pepper, with the identity
and the server as associated data: the id opened by another identity, or on another server's path,
fails like a made-up one (404). Nothing is stored while a session lasts, so a restart or another
replica changes nothing.

Only its end is shared: a DELETE writes the id's SHA-256 to the store (``EndedSessions``, kept until
the id would have expired anyway), and every replica checks it before serving a session. An ended
id is cached for good (it never comes back); a "not ended" answer is trusted for ``ended_check_s``
(default 1 s), so an end holds on the replica that received it at once and on every other replica
within that window. With 0 the store is read on every request (see the README for what it costs).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections import OrderedDict

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..store.base import StoreUnavailable
from ..store.mcp_sessions import EndedSessions
from .jsonrpc import Refusal

PURPOSE = b"sluice mcp sessions v1"
_ENDED_KEPT = 100_000  # ended ids remembered per replica (oldest forgotten first)
_MAX_ID = 512  # a longer header is no session of ours: refused before any decryption
_LIVE_KEPT = 100_000  # "not ended" answers cached per replica
_OPENED_KEPT = 10_000  # ids this replica has opened, remembered with what they opened to (oldest forgotten first)


class Session(msgspec.Struct, array_like=True):
    """What a session carries: the negotiated protocol version, when it began and when it ends."""

    protocol: str
    created: float
    expires: float
    client: str = ""  # the client's declared name (clientInfo.name), for logs


class Sessions:
    """Seals new sessions into ids and opens them again for the same identity and server."""

    __slots__ = ("_aead", "_ttl_s", "_ended", "_live", "_shared", "_check_s", "_opened", "_asking")

    def __init__(self, pepper: bytes, ttl_s: float, shared: EndedSessions | None = None, check_s: float = 1.0) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(pepper)
        self._aead = AESGCM(key)
        self._ttl_s = ttl_s
        self._ended: OrderedDict[str, float] = OrderedDict()  # digest -> when the id would have expired
        self._live: OrderedDict[str, float] = OrderedDict()  # digest -> until when "not ended" is trusted
        self._shared = shared  # the ended-session list every replica reads (None: this replica's memory only)
        self._check_s = check_s
        # id -> (the identity and server it was opened for, its session, its digest): an agent sends the same id
        # on every request, and opening it costs AES-GCM, base64 and SHA-256 (~10 µs of a ~300 µs tools/call)
        self._opened: OrderedDict[str, tuple[bytes, Session, str]] = OrderedDict()
        # digest -> the store read under way: the requests of a session that arrive while its "not ended" answer
        # is being renewed wait for that one read (each reading the store took a pooled connection each, past
        # the pool's size: new connections opened and closed every ``ended_check_s`` under concurrency)
        self._asking: dict[str, asyncio.Future[bool]] = {}

    @staticmethod
    def _bound(identity_id: str, server: str) -> bytes:
        return identity_id.encode() + b"\x00" + server.encode()

    def begin(self, identity_id: str, server: str, protocol: str, client: str = "") -> str:
        """A new session's id (visible ASCII, as the transport requires)."""
        now = time.time()
        plain = msgspec.msgpack.encode(Session(protocol, now, now + self._ttl_s, client[:64]))
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, plain, self._bound(identity_id, server))
        return "mcs_" + base64.urlsafe_b64encode(sealed).decode().rstrip("=")

    @staticmethod
    def digest(session_id: str) -> str:
        """What the store keeps of an ended id: never the id itself."""
        return hashlib.sha256(session_id.encode()).hexdigest()

    def unseal(self, session_id: str, identity_id: str, server: str) -> Session | None:
        """The session sealed in this id for this identity and server, unexpired; None otherwise (ended or not)."""
        if not session_id.startswith("mcs_") or len(session_id) > _MAX_ID:
            return None
        try:
            raw = base64.urlsafe_b64decode(session_id[4:] + "=" * (-len(session_id[4:]) % 4))
            plain = self._aead.decrypt(raw[:12], raw[12:], self._bound(identity_id, server))
            session = msgspec.msgpack.decode(plain, type=Session)
        except (InvalidTag, ValueError, msgspec.DecodeError):
            return None
        return session if session.expires > time.time() else None

    def _unsealed(self, session_id: str, identity_id: str, server: str) -> tuple[Session, str] | None:
        """``unseal`` and ``digest``, remembered per id: the same id with another identity or server is refused as
        its unsealing would be (the binding is the AES-GCM associated data), an expired one as well."""
        bound = self._bound(identity_id, server)
        known = self._opened.get(session_id)
        if known is not None:
            if known[0] != bound or known[1].expires <= time.time():
                return None
            return known[1], known[2]
        session = self.unseal(session_id, identity_id, server)
        if session is None:
            return None
        digest = self.digest(session_id)
        self._opened[session_id] = (bound, session, digest)
        if len(self._opened) > _OPENED_KEPT:
            self._opened.popitem(last=False)
        return session, digest

    async def open(self, session_id: str, identity_id: str, server: str) -> Session | None:
        """The session, or None: not ours, another identity's or server's, expired, or ended on any replica."""
        got = self._unsealed(session_id, identity_id, server)
        if got is None:
            return None
        session, digest = got
        if digest in self._ended:
            return None
        if self._shared is None:
            return session
        now = time.time()
        if self._live.get(digest, 0.0) > now:
            return session
        asking = self._asking.get(digest)
        if asking is None:
            asking = self._asking[digest] = asyncio.ensure_future(self._shared.ended(digest))
            asking.add_done_callback(lambda _: self._asking.pop(digest, None))
        try:
            ended = await asyncio.shield(asking)  # one waiter cancelled does not cancel the read the others wait for
        except StoreUnavailable:  # fail closed: an end we cannot read could be one
            raise Refusal(-32603, "Sessions cannot be checked right now; retry shortly.", "store_unavailable", 503,
                          {"Retry-After": "1"}) from None
        if ended:
            self._remember(digest, session.expires)
            return None
        if self._check_s > 0:
            self._live[digest] = now + self._check_s
            self._live.move_to_end(digest)
            while len(self._live) > _LIVE_KEPT:
                self._live.popitem(last=False)
        return session

    async def end(self, session_id: str, session: Session) -> None:
        """Refuse this id from now on: here at once, on every replica sharing the store within ``ended_check_s``."""
        digest = self.digest(session_id)
        self._remember(digest, session.expires)
        if self._shared is not None:
            try:
                await self._shared.end(digest, session.expires)
            except StoreUnavailable:
                raise Refusal(-32603, "The session could not be ended everywhere; retry shortly.", "store_unavailable",
                              503, {"Retry-After": "1"}) from None

    def _remember(self, digest: str, expires: float) -> None:
        self._live.pop(digest, None)
        self._ended[digest] = expires
        now = time.time()
        while self._ended and (len(self._ended) > _ENDED_KEPT or next(iter(self._ended.values())) <= now):
            self._ended.popitem(last=False)
