"""Guardrails: input validation, sensitive-data detectors, output minimisation, tool-call boundaries."""

from .approvals import ToolApprovals, context_digest
from .detectors import KINDS, Detector, Finding
from .inputs import check_request
from .outputs import OutputGuard
from .policy import GuardPolicy, Rules, parse
from .tools import Judgement, ToolCall, judge

__all__ = ["KINDS", "Detector", "Finding", "GuardPolicy", "Judgement", "OutputGuard", "Rules", "ToolApprovals",
           "ToolCall", "check_request", "context_digest", "judge", "parse"]
