"""Who may use the control plane: admin credentials only; data-plane keys are refused here."""

from __future__ import annotations

from ..core.errors import Unauthenticated
from ..core.exchange import Exchange
from ..identity import Actor, Hasher, inspect


class AdminAuth:
    """Checks the bearer credential against the configured admin keys (as HMACs)."""

    def __init__(self, hasher: Hasher, admin_keys: list[str]) -> None:
        self._hasher = hasher
        self._digests = {hasher.digest(k): i for i, k in enumerate(admin_keys)}

    def __call__(self, exchange: Exchange) -> Actor:
        token = exchange.bearer()
        if token is None:
            raise Unauthenticated("An admin credential is required: 'Authorization: Bearer ADMIN_KEY'.", code="missing_api_key")
        index = self._digests.get(self._hasher.digest(token))
        if index is None:
            info = inspect(token)
            if info is not None and info.kind == "data":
                raise Unauthenticated("Data-plane keys are not accepted on the control plane.", code="wrong_plane")
            raise Unauthenticated("Incorrect admin credential.", code="invalid_api_key")
        return Actor(f"admin-{index}", exchange.peer)
