"""In-memory credential index: what both planes consult on every request.

Loaded from the store at start, updated at once by every control-plane change in the same
process, and patched with what another replica changed in the store (reloaded whole when that
cannot be told exactly; see ``sync``), so a revoked key is refused with no database round-trip
on the request path.
"""

from __future__ import annotations

from ..core import clock
from ..core.errors import Unauthenticated
from ..core.types import ApiKey, Identity, Plane
from .keys import Hasher
from .gate import RateGate
from .principal import Principal
from .served import Served


def unknown_key() -> Unauthenticated:
    """The answer to a key that is not one of ours, and to one of ours on a listener that does not serve it."""
    return Unauthenticated("Incorrect API key provided.", code="invalid_api_key")


class CredentialRegistry:
    """Maps the HMAC of a presented key to its principal; knows live identities and keys."""

    def __init__(self, hasher: Hasher) -> None:
        self._hasher = hasher
        self._by_hash: dict[str, Principal] = {}
        self._hash_of_key: dict[str, str] = {}
        self._identities: dict[str, Identity] = {}
        self._by_name: dict[str, Identity] = {}
        self.last_used: dict[str, float] = {}
        # bumped by every in-process change, so a reload read before one is not installed over it
        self.generation = 0
        # failed authentications per source address (set by the app; None: not limited)
        self.failures: RateGate | None = None
        # set while the store has been unreachable past ``lifecycle.outage_grace_s``: the data plane
        # stops serving what it can no longer confirm (503 store_unavailable)
        self.unconfirmed_too_long = False

    def __len__(self) -> int:
        return len(self._by_hash)

    def load(self, identities: list[Identity], keys: list[ApiKey], *, generation: int | None = None) -> bool:
        """Replace the whole index with the live identities and keys given; False (nothing
        replaced) if this process changed the index since ``generation`` was read."""
        if generation is not None and generation != self.generation:
            return False
        live = {i.id: i for i in identities if i.disabled_at is None}
        by_hash: dict[str, Principal] = {}
        hash_of_key: dict[str, str] = {}
        for key in keys:
            ident = live.get(key.identity_id)
            if key.revoked_at is None and ident is not None:
                by_hash[key.hash] = Principal(ident, key)
                hash_of_key[key.id] = key.hash
        self._by_hash, self._hash_of_key, self._identities = by_hash, hash_of_key, live
        self._by_name = {i.name: i for i in live.values()}
        return True

    def patch(self, identities: dict[str, Identity | None], keys: list[ApiKey], key_ids: frozenset[str] | set[str], *,
              generation: int) -> bool:
        """Replace what the index holds of some identities and keys with their stored state, as ``load`` would:
        ``identities``, every identity the changes named (None: no longer stored); ``keys``, every stored key
        of those and every key the changes named; ``key_ids``, the keys the changes named (one no longer
        stored is forgotten). A named key of an identity not named is built on the identity held, which no
        change since has touched. False (nothing replaced) if this process changed the index since ``generation``."""
        if generation != self.generation:
            return False
        for key_id in key_ids:
            self._forget(key_id)
        for key in keys:
            self._forget(key.id)
        for iid, ident in identities.items():
            old = self._identities.pop(iid, None)
            if old is not None and self._by_name.get(old.name) is old:
                del self._by_name[old.name]
            if ident is not None and ident.disabled_at is None:
                self._identities[iid] = ident
                self._by_name[ident.name] = ident
        for key in keys:
            ident = self._identities.get(key.identity_id)
            if key.revoked_at is None and ident is not None:
                self._by_hash[key.hash] = Principal(ident, key)
                self._hash_of_key[key.id] = key.hash
        return True

    def _forget(self, key_id: str) -> None:
        digest = self._hash_of_key.pop(key_id, None)
        if digest is not None:
            self._by_hash.pop(digest, None)

    def put_identity(self, identity: Identity, keys: list[ApiKey]) -> None:
        """An identity changed (scopes, roles, team): rebuild its principals."""
        self.generation += 1
        old = self._identities.get(identity.id)
        if old is not None and self._by_name.get(old.name) is old:
            del self._by_name[old.name]
        if identity.disabled_at is not None:
            self._identities.pop(identity.id, None)
            for k in keys:
                self.remove(k.id)
            return
        self._identities[identity.id] = identity
        self._by_name[identity.name] = identity
        for k in keys:
            if k.revoked_at is None:
                self.add(identity, k)

    def add(self, identity: Identity, key: ApiKey) -> None:
        """A new or changed live key of a live identity."""
        self.generation += 1
        self._identities[identity.id] = identity
        self._by_name[identity.name] = identity
        self._by_hash[key.hash] = Principal(identity, key)
        self._hash_of_key[key.id] = key.hash

    def remove(self, key_id: str) -> None:
        """Forget a key (revoked)."""
        self.generation += 1
        self._forget(key_id)

    def identity(self, identity_id: str) -> Identity | None:
        """A live (not disabled) identity by id."""
        return self._identities.get(identity_id)

    def identity_by_name(self, name: str) -> Identity | None:
        """A live identity by its unique name (federation rules name identities)."""
        return self._by_name.get(name)

    def key_is_live(self, key_id: str, now: float) -> bool:
        """The key is neither revoked nor past its expiry (or its rotation overlap, or its identity's expiry)."""
        digest = self._hash_of_key.get(key_id)
        if digest is None:
            return False
        ends = self._by_hash[digest].expires_at
        return ends is None or now < ends

    def authenticate(self, secret: str, plane: Plane = "data", served: Served | None = None) -> Principal:
        """The principal of a live key of this plane, or ``Unauthenticated`` (401). ``served``: the named
        listener the key came through; one it does not serve is unknown there, whatever else is true of it."""
        principal = self._by_hash.get(self._hasher.digest(secret))
        if principal is None or served is not None and not served.admits(principal):
            raise unknown_key()
        if principal.plane != plane:
            raise Unauthenticated(f"This key belongs to the {principal.plane} plane and is not accepted here.", code="wrong_plane")
        now = clock.now()
        if principal.expires_at is not None and now >= principal.expires_at:
            # the principal's expiry is the earlier of the key's and the identity's
            raise Unauthenticated("The API key (or its identity) has expired.", code="expired_api_key")
        self.last_used[principal.key_id] = now
        return principal

    def touch(self, credential_id: str) -> None:
        """Record a use of a credential that is not a key lookup (a token minted from it)."""
        self.last_used[credential_id] = clock.now()

    def take_last_used(self) -> dict[str, float]:
        """Hand over the last-use times gathered since the previous call."""
        out, self.last_used = self.last_used, {}
        return out
