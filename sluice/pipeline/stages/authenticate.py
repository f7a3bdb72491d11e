"""Stage: who is calling. No credential, no route."""

from __future__ import annotations

from ...core.errors import Unauthenticated
from ...identity import CredentialRegistry, inspect
from ..context import RequestContext


class Authenticate:
    """Resolves the bearer key to a principal, or stops the request with 401."""

    __slots__ = ("_registry",)

    def __init__(self, registry: CredentialRegistry) -> None:
        self._registry = registry

    async def __call__(self, ctx: RequestContext) -> None:
        token = ctx.exchange.bearer()
        if token is None:
            raise Unauthenticated(
                "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.", code="missing_api_key"
            )
        try:
            ctx.principal = self._registry.authenticate(token)
        except Unauthenticated:
            info = inspect(token)
            if info is not None and info.kind == "admin":
                raise Unauthenticated(
                    "Control-plane credentials are not accepted on the data plane.", code="wrong_plane"
                ) from None
            raise
