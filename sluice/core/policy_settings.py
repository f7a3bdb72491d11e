"""The ``policy:`` config section: which parts of the policy need a second operator's approval."""

from __future__ import annotations

import msgspec


class PolicySettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``prod``: the parts of the policy tagged prod, each a section name (``routing``, ``limits``) or
    ``route:NAME``; a change set touching one needs an operator other than its proposer to approve it.
    Everything else is dev: applied when proposed if ``auto_apply_dev``, else waiting for any operator."""

    prod: list[str] = msgspec.field(default_factory=list)
    auto_apply_dev: bool = True
