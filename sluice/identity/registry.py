"""In-memory credential index: what the data plane consults on every request.

Loaded from the store at start and updated by every control-plane change in the same
process, so a revoked key is refused on the very next request with no database round-trip.
"""

from __future__ import annotations

from ..core import clock
from ..core.errors import Unauthenticated
from ..core.types import ApiKey, Identity
from .keys import Hasher
from .principal import Principal



class CredentialRegistry:
    """Maps the HMAC of a presented key to its principal; records last use in memory."""

    def __init__(self, hasher: Hasher) -> None:
        self._hasher = hasher
        self._by_hash: dict[str, Principal] = {}
        self._hash_of_key: dict[str, str] = {}
        self.last_used: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def load(self, pairs: list[tuple[Identity, ApiKey]]) -> None:
        """Replace the whole index with the live keys given."""
        by_hash: dict[str, Principal] = {}
        hash_of_key: dict[str, str] = {}
        for identity, key in pairs:
            if key.revoked_at is None and identity.disabled_at is None:
                by_hash[key.hash] = Principal(identity, key)
                hash_of_key[key.id] = key.hash
        self._by_hash, self._hash_of_key = by_hash, hash_of_key

    def add(self, identity: Identity, key: ApiKey) -> None:
        self._by_hash[key.hash] = Principal(identity, key)
        self._hash_of_key[key.id] = key.hash

    def remove(self, key_id: str) -> None:
        digest = self._hash_of_key.pop(key_id, None)
        if digest is not None:
            self._by_hash.pop(digest, None)

    def authenticate(self, secret: str) -> Principal:
        """The principal of a live key, or ``Unauthenticated`` (401)."""
        principal = self._by_hash.get(self._hasher.digest(secret))
        if principal is None:
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        now = clock.now()
        if principal.expires_at is not None and now >= principal.expires_at:
            raise Unauthenticated("The API key has expired.", code="expired_api_key")
        self.last_used[principal.key_id] = now
        return principal

    def take_last_used(self) -> dict[str, float]:
        """Hand over the last-use times gathered since the previous call."""
        out, self.last_used = self.last_used, {}
        return out
