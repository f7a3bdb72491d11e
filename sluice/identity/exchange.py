"""``POST /v1/token``: OAuth 2.0 Token Exchange (RFC 8693).

A caller presents an API key (``...:token-type:access_token``) or a federated workload
token (``...:token-type:jwt`` or ``...:id_token``) and receives a short-lived sluice access
token bound to its identity's scopes and environment, optionally narrowed by ``scope``. Its
audience is the gateway's own, or the resource named by ``resource`` (RFC 8707) or ``audience``
when that is one the gateway serves (an MCP endpoint's canonical URI): such a token is accepted
only there.
Errors use the OpenAI envelope with the OAuth error name as ``code``.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import parse_qsl

import msgspec

from ..core.errors import InvalidRequest, Unauthenticated
from ..core.exchange import Exchange, Reply
from .federation import Federation
from .gate import RateGate
from .principal import Principal, Scopes
from .registry import CredentialRegistry
from .tokens import TokenService, looks_like_jwt

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
JWT = "urn:ietf:params:oauth:token-type:jwt"
ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"
_FORM = "application/x-www-form-urlencoded"


def _form(ex: Exchange) -> dict[str, str]:
    ctype = (ex.headers.get("Content-Type") or "").lower()
    try:
        if ctype.startswith("application/json"):
            data = msgspec.json.decode(ex.body or b"{}")
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise ValueError
            return data
        if ctype and not ctype.startswith(_FORM):
            raise InvalidRequest(f"Send the token request as {_FORM}.", code="invalid_request", status=415)
        return dict(parse_qsl(ex.body.decode(), keep_blank_values=True, strict_parsing=bool(ex.body), max_num_fields=32))
    except (ValueError, UnicodeDecodeError, msgspec.DecodeError, RecursionError):
        # RecursionError: msgspec's answer to JSON nested deeper than it will follow.
        raise InvalidRequest("The token request body cannot be parsed.", code="invalid_request") from None


class TokenExchange:
    """The token endpoint of the data plane."""

    def __init__(self, registry: CredentialRegistry, tokens: TokenService, federation: Federation, *,
                 per_source: RateGate | None = None, per_identity: RateGate | None = None,
                 resources: Callable[[Exchange, str], bool] | None = None) -> None:
        self._resources = resources  # whether a resource URI (the audience asked for) is served here
        self._registry = registry
        self._tokens = tokens
        self._federation = federation
        self._per_source = per_source
        self._per_identity = per_identity

    async def __call__(self, ex: Exchange) -> Reply:
        """Rate-limited per source address; a refused credential counts as an authentication failure."""
        source = ex.peer or "unknown"
        if self._per_source is not None:
            self._per_source.take(source)
        try:
            return await self._exchange(ex)
        except Unauthenticated:
            failures = self._registry.failures
            if failures is not None:
                failures.failed(source)
            raise

    async def _exchange(self, ex: Exchange) -> Reply:
        form = _form(ex)
        if form.get("grant_type") != GRANT:
            raise InvalidRequest(f"grant_type must be {GRANT}.", code="unsupported_grant_type", param="grant_type")
        subject = form.get("subject_token") or ""
        kind = form.get("subject_token_type") or ""
        if not subject:
            raise InvalidRequest("subject_token is required.", code="invalid_request", param="subject_token")
        if kind not in (ACCESS_TOKEN, JWT, ID_TOKEN):
            raise InvalidRequest(f"subject_token_type must be {ACCESS_TOKEN}, {JWT} or {ID_TOKEN}.",
                                 code="invalid_request", param="subject_token_type")
        audience = form.get("resource") or form.get("audience")
        if form.get("resource") and form.get("audience") and form["resource"] != form["audience"]:
            raise InvalidRequest("resource and audience name different targets.", code="invalid_target", param="audience")
        if audience == self._tokens.audience:
            audience = None
        elif audience is not None and (self._resources is None or not self._resources(ex, audience)):
            raise InvalidRequest("audience is not served here.", code="invalid_target", param="audience")

        if kind == ACCESS_TOKEN:
            if looks_like_jwt(subject):
                raise Unauthenticated("A sluice access token cannot be exchanged for another; present the key.",
                                      code="invalid_grant")
            principal = self._registry.authenticate(subject, plane="data", served=ex.listener)
            identity = self._registry.identity(principal.identity_id)
            credential = principal.key_id or ""
            not_after = principal.expires_at  # the key's expiry, or the end of its rotation overlap
        else:
            if not self._federation:
                raise Unauthenticated("No federated issuers are trusted here.", code="invalid_grant")
            name, issuer = await self._federation.resolve(subject)
            identity = self._registry.identity_by_name(name)
            credential = f"fed:{issuer}"
            not_after = None
        if identity is not None and ex.listener is not None and kind != ACCESS_TOKEN \
                and not ex.listener.admits(Principal(identity, None)):
            identity = None  # a federated workload this listener does not serve: as one mapped to no identity
        if identity is None or "invoker" not in identity.roles:
            raise Unauthenticated("The identity is disabled or may not call models.", code="invalid_grant")
        if self._per_identity is not None:
            self._per_identity.take(identity.id)

        models = None
        if form.get("scope"):
            models = form["scope"].split()
            granted = Scopes(identity.models)
            refused = [m for m in models if m.endswith("*") or not granted.allows(m)]
            if refused:
                raise InvalidRequest(f"scope asks for models beyond the identity's: {' '.join(refused)}",
                                     code="invalid_scope", param="scope")
        # mint refuses an expired identity, and caps the token at the identity's and the key's expiry
        token, ttl = self._tokens.mint(identity, credential, models=models, not_after=not_after, audience=audience)
        body = {"access_token": token, "issued_token_type": ACCESS_TOKEN, "token_type": "Bearer", "expires_in": ttl}
        if models is not None:
            body["scope"] = " ".join(models)
        return Reply.json(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})
