"""AES-GCM under a key per identity, derived from the pepper: how stored responses rest.

Each identity's key is HKDF-SHA256 of the pepper with the identity's id in its info, so one
identity's rows cannot be opened with another's key; each row's id is the associated data, so a
sealed value moved to another row (or another identity's) fails to open instead of being read.
"""

from __future__ import annotations

import base64
import os
from collections import OrderedDict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PURPOSE = b"sluice stored responses v1:"
_KEEP = 4096  # identities whose derived key is kept (an LRU: a key costs one HKDF to derive again)


class Vault:
    """Seals and opens values for one identity at a time, bound to the id of the row that holds them."""

    __slots__ = ("_pepper", "_keys")

    def __init__(self, pepper: bytes) -> None:
        self._pepper = pepper
        self._keys: OrderedDict[str, AESGCM] = OrderedDict()

    def _key(self, identity_id: str) -> AESGCM:
        aead = self._keys.get(identity_id)
        if aead is None:
            hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=PURPOSE + identity_id.encode())
            aead = self._keys[identity_id] = AESGCM(hkdf.derive(self._pepper))
            if len(self._keys) > _KEEP:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(identity_id)
        return aead

    def seal(self, identity_id: str, row_id: str, data: bytes) -> str:
        nonce = os.urandom(12)
        return base64.b64encode(nonce + self._key(identity_id).encrypt(nonce, data, row_id.encode())).decode()

    def open(self, identity_id: str, row_id: str, sealed: str) -> bytes:
        """The plain value; ``cryptography.exceptions.InvalidTag`` if it is not this identity's row's."""
        raw = base64.b64decode(sealed)
        return self._key(identity_id).decrypt(raw[:12], raw[12:], row_id.encode())
