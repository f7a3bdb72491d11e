"""The credential a batch's lines are run under: its owner identity, as the registry holds it now."""

from __future__ import annotations

from ..core.errors import Unauthenticated
from ..identity import CredentialRegistry, Principal


class BatchOwner:
    """Presented to the pipeline's Authenticate stage in the place of a client certificate: the identity that
    created the batch, resolved by the registry at each line, so a disabled or deleted owner stops its batch and
    a change of its scopes or roles applies to the lines still to run."""

    __slots__ = ("identity_id", "identity_name", "credential", "_identity", "_principal")
    name = None  # no key comes with it, so there is no other identity to compare with
    priority = "batch"  # the fair queue of a model with a capacity serves every other request first

    def __init__(self, identity_id: str, identity_name: str, batch_id: str) -> None:
        self.identity_id = identity_id
        self.identity_name = identity_name
        self.credential = f"batch:{batch_id}"
        self._identity = None
        self._principal: Principal | None = None

    def authenticate(self, registry: CredentialRegistry) -> Principal:
        identity = registry.identity_by_name(self.identity_name)
        if identity is None or identity.id != self.identity_id:
            raise Unauthenticated("The batch's owner is no longer an active identity.", code="batch_owner_inactive")
        if identity is not self._identity or self._principal is None:
            self._principal = Principal(identity, None, credential_id=self.credential)
            self._identity = identity
        return self._principal


class BatchLine:
    """One line's credential: its batch's owner, and the key that charges the line once against the owner's limits
    however often it runs (a refusal upstream, a cut call, a replica that died mid-line)."""

    __slots__ = ("owner", "charge_key")
    name = None
    priority = "batch"

    def __init__(self, owner: BatchOwner, charge_key: str) -> None:
        self.owner = owner
        self.charge_key = charge_key

    def authenticate(self, registry: CredentialRegistry) -> Principal:
        return self.owner.authenticate(registry)
