"""Stage: may this principal use this model? Deny by default; never reveal what exists."""

from __future__ import annotations

from ...core.errors import NotFound
from ..context import RequestContext


def model_not_found(model: str) -> NotFound:
    """The same answer for a model that does not exist and one the caller may not use."""
    return NotFound(
        f"The model `{model[:256]}` does not exist or you do not have access to it.",
        code="model_not_found", param="model",
    )


class Authorize:
    """Checks the requested model against the principal's model scopes, and a named listener's models."""

    __slots__ = ()

    def __call__(self, ctx: RequestContext) -> None:
        model = ctx.request.model
        if not ctx.principal.scopes.allows(model):  # type: ignore[union-attr]
            raise model_not_found(model)
        served = ctx.exchange.listener
        if served is not None and not served.serves_model(model):
            raise model_not_found(model)
