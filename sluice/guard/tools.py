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
    canonical: str | None = None  # the parsed arguments in one spelling: what is hashed, shown and sent on


class ArgumentsError(ValueError):
    """Arguments that are not strict JSON: a duplicate key, NaN or Infinity, a number out of range."""


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):  # parsers disagree on which duplicate wins: an approver could see the other
        raise ArgumentsError("duplicate_key")
    return out


def _no_constant(name: str) -> Any:
    raise ArgumentsError("not_json")  # NaN, Infinity, -Infinity: not JSON


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):  # 1e400: a float no JSON peer reads the same way
        raise ArgumentsError("number_out_of_range")
    return value


def parse_arguments(text: str) -> Any:
    """A tool call's arguments as strict JSON: one value per key, no NaN or Infinity; raises ``ArgumentsError``.

    Every consumer of the call (the approver, the hash, the tool) then reads the same value.
    """
    try:
        return json.loads(text or "{}", object_pairs_hook=_pairs, parse_constant=_no_constant, parse_float=_finite)
    except ArgumentsError:
        raise
    except (ValueError, RecursionError):
        raise ArgumentsError("not_json") from None


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical(args: Any) -> str:
    """One spelling of a JSON value: sorted keys, no spaces; what approvals hash and what allowed calls carry.
    (``json.dumps`` with these options built a new encoder per call: one is kept.)"""
    return _CANONICAL.encode(args)


def args_digest(args: Any) -> str:
    return hashlib.sha256(canonical(args).encode()).hexdigest()


def judge(policy: GuardPolicy, identity: str, team: str | None, call: ToolCall) -> Judgement:
    """Allow, block or hold one call for this caller."""
    tool = policy.tools.get(call.name)
    if tool is None or not tool.allows(identity, team):
        return Judgement(call=call, verdict="block", reason="tool_not_allowed")
    try:
        args = parse_arguments(call.arguments)
    except ArgumentsError as exc:
        reason = "arguments_not_json" if str(exc) == "not_json" else f"arguments_not_json ({exc})"
        return Judgement(call=call, verdict="block", reason=reason, risk=tool.risk)
    return _checked(tool, call, args, canonical(args))


def judge_value(policy: GuardPolicy, identity: str, team: str | None, name: str, args: dict[str, Any],
                call_id: str = "") -> Judgement:
    """``judge`` for arguments that arrived already decoded from a JSON body (an MCP ``tools/call``): spelled
    once in canonical JSON and checked as they are, not spelled, re-read and spelled again. The body's decoder
    kept one value per key; a float it read as infinite or NaN (``1e400``) is no JSON value and is blocked."""
    try:
        text = canonical(args)
    except (ValueError, TypeError, RecursionError):
        text = None
    call = ToolCall(id=call_id, name=name, arguments=text or "")
    tool = policy.tools.get(name)
    if tool is None or not tool.allows(identity, team):
        return Judgement(call=call, verdict="block", reason="tool_not_allowed")
    if text is None:
        return Judgement(call=call, verdict="block", reason="arguments_not_json (number_out_of_range)", risk=tool.risk)
    return _checked(tool, call, args, text)


def _checked(tool: Any, call: ToolCall, args: Any, text: str) -> Judgement:
    """The verdict on arguments read as ``args`` and spelled canonically as ``text``: the schema, then the risk."""
    problem = tool.argument_error(args)
    if problem is not None:
        return Judgement(call=call, verdict="block", reason=f"arguments_invalid ({problem})", risk=tool.risk)
    digest = hashlib.sha256(text.encode()).hexdigest()
    if tool.risk == "high":
        return Judgement(call=call, verdict="hold", reason="approval_required", risk=tool.risk, args_sha256=digest,
                         canonical=text)
    return Judgement(call=call, verdict="allow", reason="allowed", risk=tool.risk, args_sha256=digest, canonical=text)


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
