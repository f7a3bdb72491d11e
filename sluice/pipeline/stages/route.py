"""Stage: where does this request go? Only to targets named in config."""

from __future__ import annotations

from ...routing import RouteTable
from ...upstream import Transport
from ..context import RequestContext
from .authorize import model_not_found


class Route:
    """Resolves the model to a target and its transport; environments must match."""

    __slots__ = ("_routes", "_transports")

    def __init__(self, routes: RouteTable, transports: dict[str, Transport]) -> None:
        self._routes = routes
        self._transports = transports

    async def __call__(self, ctx: RequestContext) -> None:
        model = ctx.request.model
        target = self._routes.get(model)
        if target is None or (target.environment is not None and target.environment != ctx.principal.environment):  # type: ignore[union-attr]
            raise model_not_found(model)
        ctx.target = target
        ctx.transport = self._transports[target.upstream]
