"""What one named data-plane listener serves (``data_plane[i].serves``), as the request path asks it.

A caller the listener does not serve is refused exactly as an unknown credential is, and a model it does
not serve is answered as an unknown model, so that no answer tells one listener's callers or models from
what does not exist.
"""

from __future__ import annotations

from ..core.listener_config import Serves
from .principal import Principal, Scopes


class Served:
    """A named listener's gate: its name (recorded on usage, metrics and decisions) and whom and what it serves.

    An unnamed single listener has none: the request path tests ``exchange.listener is None`` and goes on.
    """

    __slots__ = ("name", "_identities", "_teams", "_environments", "_everyone", "models")

    def __init__(self, name: str, serves: Serves | None = None) -> None:
        s = serves or Serves()
        self.name = name
        self._identities = frozenset(s.identities or ())
        self._teams = frozenset(s.teams or ())
        self._environments = None if s.environments is None else frozenset(s.environments)
        self._everyone = s.identities is None and s.teams is None
        self.models: Scopes | None = None if s.models is None else Scopes(s.models)  # None: the caller's scopes alone

    def admits(self, principal: Principal) -> bool:
        """The caller is one this listener serves (by name or team, then environment)."""
        if not (self._everyone or principal.identity_name in self._identities or principal.team in self._teams):
            return False
        return self._environments is None or principal.environment in self._environments

    def serves_model(self, model: str) -> bool:
        """The model is one this listener answers (the caller's own scopes are checked apart)."""
        return self.models is None or self.models.allows(model)
