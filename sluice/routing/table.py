"""Route table: the model name a caller uses resolves to one target (backend and its model name)."""

from __future__ import annotations

from ..core.config import Model
from ..core.types import Environment


class Target:
    """Where a model's requests go: an upstream by name and the name it knows the model by."""

    __slots__ = ("model", "upstream", "upstream_model", "environment")

    def __init__(self, model: str, upstream: str, upstream_model: str, environment: Environment | None) -> None:
        self.model = model
        self.upstream = upstream
        self.upstream_model = upstream_model
        self.environment = environment


class RouteTable:
    """Model name -> target, built from config; callers never supply an upstream URL."""

    def __init__(self, models: list[Model]) -> None:
        self._targets = {m.name: Target(m.name, m.upstream, m.target_model, m.environment) for m in models}

    def get(self, model: str) -> Target | None:
        return self._targets.get(model)

    def names(self) -> list[str]:
        return list(self._targets)

    def targets(self) -> list[Target]:
        return list(self._targets.values())

    def retarget(self, model: str, upstream: str, upstream_model: str) -> Target:
        """Point an existing model at another upstream or upstream model; the next request sees it."""
        old = self._targets[model]
        target = Target(model, upstream, upstream_model, old.environment)
        self._targets[model] = target  # one assignment: a request sees the old or the new, never half
        return target
