"""Where a request goes: the routing policy, route matching, target choice, breakers, explanations."""

from .breaker import CircuitBreaker
from .bulkhead import Bulkhead, bulkhead_for, bulkheads
from .decisions import DecisionLog, explain
from .egress import refused_url
from .health import run_checks
from .policy import PolicyError, RoutingPolicy, from_config
from .placement import Deployment, LeastOutstanding, Placement, PrefixAffinity, Replica, RoundRobin, build_placement
from .state import RoutingState
from .supply import Supply
from .table import KILLED, CompiledRoute, Decision, NoTarget, RouteTable, Target

__all__ = ["KILLED", "Bulkhead", "CircuitBreaker", "CompiledRoute", "Decision", "DecisionLog", "Deployment", "LeastOutstanding", "NoTarget",
           "Placement", "PolicyError", "PrefixAffinity", "Replica", "RoundRobin", "RouteTable",
           "RoutingPolicy", "RoutingState", "Supply", "Target", "build_placement", "bulkhead_for", "bulkheads", "explain",
           "from_config", "refused_url", "run_checks"]
