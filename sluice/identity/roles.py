"""Roles and the control-plane scopes they carry: separation of duties in one table.

Who may call a model is not who may change routing, limits or keys. Roles are additive;
a principal may grant only roles it holds itself, and never change its own grants.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..core.types import ROLES

# The scope names every control-plane endpoint declares.
IDENTITIES_READ = "identities:read"
IDENTITIES_WRITE = "identities:write"
KEYS_READ = "keys:read"
KEYS_WRITE = "keys:write"
ROLES_GRANT = "roles:grant"
ROUTING_READ = "routing:read"
ROUTING_WRITE = "routing:write"
USAGE_READ = "usage:read"
AUDIT_READ = "audit:read"
INVENTORY_READ = "inventory:read"
TEAMS_WRITE = "teams:write"
LIMITS_READ = "limits:read"
LIMITS_WRITE = "limits:write"
POLICY_READ = "policy:read"
POLICY_PROPOSE = "policy:propose"
POLICY_APPROVE = "policy:approve"
POLICY_ROLLBACK = "policy:rollback"
SWITCHES_WRITE = "switches:write"
POLICY_OPERATE = frozenset({POLICY_READ, POLICY_PROPOSE, POLICY_APPROVE, POLICY_ROLLBACK, SWITCHES_WRITE})
TOOLS_READ = "tools:read"  # issue 12: held tool calls and tool decisions
TOOLS_APPROVE = "tools:approve"
# issue 23: a held call's arguments whole (canonical, unmasked); approvers need them, auditors keep the masked view
APPROVALS_READ = "approvals:read"

ROLE_SCOPES: dict[str, frozenset[str]] = {
    "invoker": frozenset(),  # the data plane only
    "operator": frozenset({ROUTING_READ, ROUTING_WRITE, LIMITS_READ, LIMITS_WRITE, USAGE_READ, IDENTITIES_READ,
                           TOOLS_READ, TOOLS_APPROVE, APPROVALS_READ}) | POLICY_OPERATE,
    "key-admin": frozenset({IDENTITIES_READ, IDENTITIES_WRITE, KEYS_READ, KEYS_WRITE, TEAMS_WRITE}),
    "auditor": frozenset({AUDIT_READ, USAGE_READ, INVENTORY_READ, IDENTITIES_READ, KEYS_READ, ROUTING_READ,
                          LIMITS_READ, POLICY_READ, TOOLS_READ}),
    "owner": frozenset({ROLES_GRANT, IDENTITIES_READ}),
}
assert set(ROLE_SCOPES) == set(ROLES)
CONTROL_ROLES = frozenset(r for r in ROLES if r != "invoker")


def scopes_of(roles: Iterable[str]) -> frozenset[str]:
    """The union of the scopes of some roles."""
    out: set[str] = set()
    for r in roles:
        out |= ROLE_SCOPES.get(r, frozenset())
    return frozenset(out)
