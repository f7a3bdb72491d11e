"""Where a request goes: route matching and target choice."""

from .table import RouteTable, Target

__all__ = ["RouteTable", "Target"]
