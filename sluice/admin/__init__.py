"""The control plane: admin authentication and API."""

from .api import AdminApi
from .audit_api import AuditAdmin
from .auth import AdminAuth
from .cache_api import CacheAdmin
from .dashboard import Dashboard
from .guard_api import GuardAdmin
from .mcp_api import McpAdmin
from .policy_api import PolicyAdmin
from .routing_api import RoutingAdmin

__all__ = ["AdminApi", "AdminAuth", "AuditAdmin", "CacheAdmin", "Dashboard", "GuardAdmin", "McpAdmin", "PolicyAdmin",
           "RoutingAdmin"]
