"""The control plane: admin authentication and API."""

from .api import AdminApi
from .auth import AdminAuth
from .routing_api import RoutingAdmin

__all__ = ["AdminApi", "AdminAuth", "RoutingAdmin"]
