"""MCP sessions sealed into their ids, so any replica sharing the pepper serves any request of a session.

A session id is AES-GCM of the session's state under a key derived from the pepper, with the identity
and the server as associated data: the id opened by another identity, or on another server's path,
fails like a made-up one (404). Nothing is stored, so a restart or another replica changes nothing.
Ending a session (DELETE) is remembered by the replica that ended it only, until the id would have
expired anyway: sessions need a shared table before an end holds on every replica (see the README).
"""

from __future__ import annotations

import base64
import os
import time
from collections import OrderedDict

import msgspec
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PURPOSE = b"sluice mcp sessions v1"
_ENDED_KEPT = 100_000  # ended ids remembered per replica (oldest forgotten first)
_MAX_ID = 512  # a longer header is no session of ours: refused before any decryption


class Session(msgspec.Struct, array_like=True):
    """What a session carries: the negotiated protocol version, when it began and when it ends."""

    protocol: str
    created: float
    expires: float
    client: str = ""  # the client's declared name (clientInfo.name), for logs


class Sessions:
    """Seals new sessions into ids and opens them again for the same identity and server."""

    __slots__ = ("_aead", "_ttl_s", "_ended")

    def __init__(self, pepper: bytes, ttl_s: float) -> None:
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE).derive(pepper)
        self._aead = AESGCM(key)
        self._ttl_s = ttl_s
        self._ended: OrderedDict[str, float] = OrderedDict()

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

    def open(self, session_id: str, identity_id: str, server: str) -> Session | None:
        """The session, or None: not ours, another identity's or server's, expired, or ended here."""
        if not session_id.startswith("mcs_") or len(session_id) > _MAX_ID or session_id in self._ended:
            return None
        try:
            raw = base64.urlsafe_b64decode(session_id[4:] + "=" * (-len(session_id[4:]) % 4))
            plain = self._aead.decrypt(raw[:12], raw[12:], self._bound(identity_id, server))
            session = msgspec.msgpack.decode(plain, type=Session)
        except (InvalidTag, ValueError, msgspec.DecodeError):
            return None
        return session if session.expires > time.time() else None

    def end(self, session_id: str, session: Session) -> None:
        """Refuse this id from now on (on this replica)."""
        self._ended[session_id] = session.expires
        now = time.time()
        while self._ended and (len(self._ended) > _ENDED_KEPT or next(iter(self._ended.values())) <= now):
            self._ended.popitem(last=False)
