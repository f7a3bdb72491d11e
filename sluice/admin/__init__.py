"""The control plane: admin authentication and API."""

from .api import AdminApi
from .auth import AdminAuth

__all__ = ["AdminApi", "AdminAuth"]
