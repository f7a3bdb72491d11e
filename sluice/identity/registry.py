"""In-memory credential index: what both planes consult on every request.

Loaded from the store at start and updated by every control-plane change in the same
process, so a revoked key is refused on the very next request with no database round-trip.
"""

from __future__ import annotations

from ..core import clock
from ..core.errors import Unauthenticated
from ..core.types import ApiKey, Identity, Plane
from .keys import Hasher
from .principal import Principal


class CredentialRegistry:
    """Maps the HMAC of a presented key to its principal; knows live identities and keys."""

    def __init__(self, hasher: Hasher) -> None:
        self._hasher = hasher
        self._by_hash: dict[str, Principal] = {}
        self._hash_of_key: dict[str, str] = {}
        self._identities: dict[str, Identity] = {}
        self.last_used: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._by_hash)

    def load(self, identities: list[Identity], keys: list[ApiKey]) -> None:
        """Replace the whole index with the live identities and keys given."""
        live = {i.id: i for i in identities if i.disabled_at is None}
        by_hash: dict[str, Principal] = {}
        hash_of_key: dict[str, str] = {}
        for key in keys:
            ident = live.get(key.identity_id)
            if key.revoked_at is None and ident is not None:
                by_hash[key.hash] = Principal(ident, key)
                hash_of_key[key.id] = key.hash
        self._by_hash, self._hash_of_key, self._identities = by_hash, hash_of_key, live

    def put_identity(self, identity: Identity, keys: list[ApiKey]) -> None:
        """An identity changed (scopes, roles, team): rebuild its principals."""
        if identity.disabled_at is not None:
            self._identities.pop(identity.id, None)
            for k in keys:
                self.remove(k.id)
            return
        self._identities[identity.id] = identity
        for k in keys:
            if k.revoked_at is None:
                self.add(identity, k)

    def add(self, identity: Identity, key: ApiKey) -> None:
        self._identities[identity.id] = identity
        self._by_hash[key.hash] = Principal(identity, key)
        self._hash_of_key[key.id] = key.hash

    def remove(self, key_id: str) -> None:
        digest = self._hash_of_key.pop(key_id, None)
        if digest is not None:
            self._by_hash.pop(digest, None)

    def identity(self, identity_id: str) -> Identity | None:
        """A live (not disabled) identity by id."""
        return self._identities.get(identity_id)

    def identity_by_name(self, name: str) -> Identity | None:
        """A live identity by its unique name (federation rules name identities)."""
        for ident in self._identities.values():
            if ident.name == name:
                return ident
        return None

    def key_is_live(self, key_id: str) -> bool:
        return key_id in self._hash_of_key

    def authenticate(self, secret: str, plane: Plane = "data") -> Principal:
        """The principal of a live key of this plane, or ``Unauthenticated`` (401)."""
        principal = self._by_hash.get(self._hasher.digest(secret))
        if principal is None:
            raise Unauthenticated("Incorrect API key provided.", code="invalid_api_key")
        if principal.plane != plane:
            raise Unauthenticated(f"This key belongs to the {principal.plane} plane and is not accepted here.", code="wrong_plane")
        now = clock.now()
        if principal.expires_at is not None and now >= principal.expires_at:
            raise Unauthenticated("The API key has expired.", code="expired_api_key")
        self.last_used[principal.key_id] = now
        return principal

    def touch(self, credential_id: str) -> None:
        """Record a use of a credential that is not a key lookup (a token minted from it)."""
        self.last_used[credential_id] = clock.now()

    def take_last_used(self) -> dict[str, float]:
        """Hand over the last-use times gathered since the previous call."""
        out, self.last_used = self.last_used, {}
        return out
