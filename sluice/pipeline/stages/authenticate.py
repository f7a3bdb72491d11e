"""Stage: who is calling. No credential, no route."""

from __future__ import annotations

from functools import partial

from ...core.errors import PermissionDenied, Unauthenticated, Unavailable
from ...identity import CredentialRegistry, TokenService, inspect, looks_like_jwt, unknown_identity
from ..context import RequestContext


class Authenticate:
    """Resolves the bearer key or access token, or else the connection's client certificate (mTLS), to a
    principal, or stops the request with 401. A key (or token) with a certificate the rules map must name
    the same identity as the certificate; a certificate no rule maps leaves the key to decide alone."""

    __slots__ = ("_registry", "_tokens")

    def __init__(self, registry: CredentialRegistry, tokens: TokenService | None = None) -> None:
        self._registry = registry
        self._tokens = tokens

    def __call__(self, ctx: RequestContext, audience: str | None = None) -> None:
        """``audience``: what an access token must have been minted for (default: the gateway's own audience);
        an MCP endpoint passes its canonical URI (RFC 8707). Keys carry no audience. Never waits (the registry
        is in memory): a plain call, not a coroutine, so the stage loops have nothing to await for it."""
        failures = self._registry.failures
        fn = self._authenticate if audience is None else partial(self._authenticate, audience=audience)
        if failures is None:
            return fn(ctx)
        # a source that keeps failing gets 429 instead of 401; a valid credential always passes
        return failures.guard(ctx.exchange.peer, fn, ctx)

    def _authenticate(self, ctx: RequestContext, audience: str | None = None) -> None:
        if self._registry.unconfirmed_too_long:
            raise Unavailable("The gateway cannot confirm credentials with its store; try again shortly.",
                              code="store_unavailable", retry_after=5)
        ex = ctx.exchange
        token = ex.bearer() or ex.headers.get("x-api-key")  # the second, as Anthropic's SDKs send it
        cert = ex.peer_cert  # mTLS: the connection's client certificate as its listener's rules read it
        served = ex.listener  # a named listener: a caller it does not serve is unknown here
        if not token:
            if cert is None:
                raise Unauthenticated("You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'"
                                      " (or 'x-api-key: YOUR_KEY').", code="missing_api_key")
            principal = cert.authenticate(self._registry)  # a workload's certificate alone (X.509-SVID)
            if served is not None and not served.admits(principal):
                raise unknown_identity()
        elif self._tokens is not None and looks_like_jwt(token):
            principal = self._tokens.authenticate(token, audience)
            if served is not None and not served.admits(principal):
                raise unknown_identity()
        else:
            try:
                principal = self._registry.authenticate(token, "data", served)
            except Unauthenticated as exc:
                info = inspect(token)
                if exc.code == "invalid_api_key" and info is not None and info.kind == "admin":
                    raise Unauthenticated("Control-plane credentials are not accepted on the data plane.",
                                          code="wrong_plane") from None
                raise
        if token and cert is not None and cert.name is not None and cert.name != principal.identity_name:
            # a key and a certificate naming two identities: neither is believed (no acting as the other)
            raise Unauthenticated("The API key and the client certificate belong to different identities.",
                                  code="credential_mismatch")
        if "invoker" not in principal.roles:
            raise PermissionDenied("This identity may not call models (it has no invoker role).", code="not_invoker")
        ctx.principal = principal
