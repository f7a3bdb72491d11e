"""Tool-call boundaries: judge a call the model made, bind approvals to its exact arguments.

A call is allowed (a ``read`` or ``write`` tool granted to the caller, arguments valid by the
tool's JSON Schema), blocked (anything else), or held (a ``high`` tool: an approver decides).
Approvals bind to the SHA-256 of the canonical JSON of the arguments, so edited arguments
never match an approval given for others.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

import msgspec

from .detectors import Detector
from .policy import GuardPolicy

Verdict = Literal["allow", "block", "hold"]


class ToolCall(msgspec.Struct, kw_only=True):
    """A call as the model made it (assembled across chunks when streamed)."""

    id: str = ""
    name: str = ""
    arguments: str = ""


class Judgement(msgspec.Struct, kw_only=True):
    """What sluice decided about one call, and why (never the argument values)."""

    call: ToolCall
    verdict: Verdict
    reason: str
    risk: str | None = None
    args_sha256: str | None = None
    approval_id: str | None = None


def canonical(args: Any) -> str:
    """One spelling of a JSON value: sorted keys, no spaces; what approvals hash."""
    return json.dumps(args, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def args_digest(args: Any) -> str:
    return hashlib.sha256(canonical(args).encode()).hexdigest()


def judge(policy: GuardPolicy, identity: str, team: str | None, call: ToolCall) -> Judgement:
    """Allow, block or hold one call for this caller."""
    tool = policy.tools.get(call.name)
    if tool is None or not tool.allows(identity, team):
        return Judgement(call=call, verdict="block", reason="tool_not_allowed")
    try:
        args = json.loads(call.arguments or "{}")
    except ValueError:
        return Judgement(call=call, verdict="block", reason="arguments_not_json", risk=tool.risk)
    problem = tool.argument_error(args)
    if problem is not None:
        return Judgement(call=call, verdict="block", reason=f"arguments_invalid ({problem})", risk=tool.risk)
    digest = args_digest(args)
    if tool.risk == "high":
        return Judgement(call=call, verdict="hold", reason="approval_required", risk=tool.risk, args_sha256=digest)
    return Judgement(call=call, verdict="allow", reason="allowed", risk=tool.risk, args_sha256=digest)


def masked_args(arguments: str, detector: Detector) -> str:
    """Arguments as they may be recorded: sensitive values masked, bounded in size."""
    return detector.mask(arguments[:4096])


def notice(j: Judgement) -> str:
    """The text a caller reads in place of a call it did not get."""
    name = j.call.name[:64]
    if j.verdict == "hold":
        return (f"[sluice] The call to `{name}` needs approval (approval id {j.approval_id}). "
                f"Retrieve the decision at /v1/tool-approvals/{j.approval_id}.")
    return f"[sluice] The call to `{name}` was blocked: {j.reason}."


def summary(judgements: list[Judgement]) -> list[dict[str, Any]]:
    """The ``sluice.tool_calls`` field of a reply: each decision, with no argument values."""
    return [{"id": j.call.id, "name": j.call.name[:64], "decision": j.verdict, "reason": j.reason,
             **({"approval_id": j.approval_id} if j.approval_id else {})} for j in judgements]
