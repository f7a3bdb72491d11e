"""Stage: where does this request go? The first matching policy route, then a target by weight.

Targets come only from the policy (config and control plane); a request never names an upstream.
"""

from __future__ import annotations

from ...core import clock
from ...core.errors import Unavailable
from ...routing import DecisionLog, NoTarget, RoutingState
from ..context import RequestContext
from ..forward import ROUTE_HEADER
from .authorize import model_not_found


class Route:
    """Decides route and target, remembers the decision for explanations; no route is a 404."""

    __slots__ = ("_state", "_log")

    def __init__(self, state: RoutingState, log: DecisionLog) -> None:
        self._state = state
        self._log = log

    def __call__(self, ctx: RequestContext) -> None:
        model = ctx.request.model
        table = self._state.table  # one table, one policy version, for the whole request
        ctx.policy = getattr(table, "active", None)
        try:
            decision = table.decide(model, ctx.principal, ctx.request, ctx.exchange, clock.now())
        except NoTarget as exc:
            if exc.killed:
                err = Unavailable(f"The model `{model[:256]}` is switched off by an operator; ask them, or retry "
                                  "once it is switched back on.", code="disabled_by_operator", retry_after=10.0)
            else:
                err = Unavailable(f"No target of the model `{model[:256]}` can take requests now; retry later.",
                                  code="no_healthy_target", retry_after=1.0)
            err.headers = {ROUTE_HEADER: f"{exc.route.name}; target=-"}
            raise err from None
        if decision is None:
            raise model_not_found(model)
        decision.policy = ctx.policy  # the lookup names the version the request ran under (issue 11)
        served = ctx.exchange.listener
        if served is not None:
            decision.listener = served.name
        self._log.add(decision)
        ctx.decision = decision
        ctx.target = decision.target
