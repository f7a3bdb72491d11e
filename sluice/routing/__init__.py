"""Where a request goes: the routing policy, route matching, target choice, breakers, explanations."""

from .breaker import CircuitBreaker
from .decisions import DecisionLog, explain
from .egress import refused_url
from .policy import PolicyError, RoutingPolicy, from_config
from .replicas import LeastOutstanding, Placement
from .state import PolicyStore, RoutingState
from .table import CompiledRoute, Decision, NoTarget, RouteTable, Target

__all__ = ["CircuitBreaker", "CompiledRoute", "Decision", "DecisionLog", "LeastOutstanding", "NoTarget", "Placement",
           "PolicyError", "PolicyStore", "RouteTable", "RoutingPolicy", "RoutingState", "Target", "explain",
           "from_config", "refused_url"]
