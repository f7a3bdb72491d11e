"""Versioned policy: one document of sections, immutable versions, change sets, approval, rollback, switches."""

from .active import HEADER, ActivePolicy
from .document import (SECTIONS, SWITCH_LIMIT, LimitsSection, PolicyDocument, PolicyInvalid, Switches, canonical, decode, diff, digest,
                       to_yaml)
from .dryrun import dry_run
from .service import FROZEN, PendingApproval, PolicyService, changeset_view
from .switches import in_force as switches_in_force
from .switches import switch_rule

__all__ = ["FROZEN", "HEADER", "SECTIONS", "SWITCH_LIMIT", "ActivePolicy", "LimitsSection", "PendingApproval",
           "PolicyDocument", "PolicyInvalid", "PolicyService", "Switches", "canonical", "changeset_view", "decode", "diff",
           "digest", "dry_run", "switch_rule", "switches_in_force", "to_yaml"]
