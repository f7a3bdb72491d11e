"""Who may use the control plane: control-plane keys of identities with roles, and the
break-glass keys of the config file. Data-plane keys and tokens are refused here."""

from __future__ import annotations

from ..core.errors import Unauthenticated
from ..core.exchange import Exchange
from ..core.types import ROLES
from ..identity import Actor, CredentialRegistry, Hasher, inspect, looks_like_jwt


DASHBOARD_PATH = "/admin/dashboard"
COOKIE = "sluice_dashboard"


def dashboard_cookie(exchange: Exchange) -> str | None:
    """A browser's control key, from the cookie the dashboard's login sets; honoured only for
    reading the dashboard (a GET that changes nothing, so a forged cross-site request gains nothing,
    and SameSite=Strict keeps the cookie off those anyway)."""
    if exchange.method != "GET" or exchange.path != DASHBOARD_PATH:
        return None
    raw = exchange.headers.get("Cookie")
    if not raw:
        return None
    from http.cookies import CookieError, SimpleCookie

    try:
        jar = SimpleCookie(raw)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value or None if morsel is not None else None


class AdminAuth:
    """Resolves the bearer credential to an ``Actor`` with the roles behind it."""

    def __init__(self, hasher: Hasher, break_glass_keys: list[str], registry: CredentialRegistry) -> None:
        self._hasher = hasher
        self._break_glass = {hasher.digest(k): i for i, k in enumerate(break_glass_keys)}
        self._registry = registry

    def __call__(self, exchange: Exchange) -> Actor:
        """The actor behind the credential; a source that keeps failing is refused with 429 first."""
        failures = self._registry.failures
        if failures is None:
            return self._actor(exchange)
        return failures.guard(exchange.peer, self._actor, exchange)

    def _actor(self, exchange: Exchange) -> Actor:
        token = exchange.bearer() or dashboard_cookie(exchange)
        if token is None:
            raise Unauthenticated("A control-plane credential is required: 'Authorization: Bearer KEY'.", code="missing_api_key")
        if looks_like_jwt(token):
            raise Unauthenticated("Access tokens are for the data plane; use a control-plane key here.", code="wrong_plane")
        index = self._break_glass.get(self._hasher.digest(token))
        if index is not None:
            return Actor(f"config-admin-{index}", exchange.peer, roles=frozenset(ROLES))
        try:
            p = self._registry.authenticate(token, "control")
        except Unauthenticated as exc:
            info = inspect(token)
            if exc.code == "invalid_api_key" and info is not None and info.kind == "data":
                raise Unauthenticated("Data-plane keys are not accepted on the control plane.", code="wrong_plane") from None
            if exc.code == "wrong_plane":
                raise Unauthenticated("Data-plane keys are not accepted on the control plane.", code="wrong_plane") from None
            raise
        return Actor(p.identity_name, exchange.peer, identity_id=p.identity_id, roles=p.roles)
