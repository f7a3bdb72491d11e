"""Tool results are untrusted input: bounded in size, read by the detectors before an agent (and its model) sees them.

So are a resource's contents (``resources/read``: each text content; blobs are bounded, not read) and a
prompt's messages (``prompts/get``): the same guard, the same bound.

A result over ``mcp.max_result_bytes`` (its JSON) is refused whole, never cut: a cut result could
drop what makes the rest safe to read. Every text a result carries (text content, embedded text
resources, every string of ``structuredContent``) is read by the detectors of the caller's rule set
(its output action: ``mask`` and ``block`` mask, ``flag`` logs the kinds); a caller whose rule set
reads nothing gets every kind masked, because a tool server is not a party the policy trusted.

The same texts get the prompt-injection signal (``sluice.guard.injection``): under the rule set's
``injection`` (``block``: refused, error -32011 ``mcp_result_injection``; otherwise flagged, at its
threshold, even when ``off`` or with no guardrails at all: a result is untrusted input). A flagged
result carries ``_meta["sluice/injection"]`` (the score) to the agent and is logged and recorded.
"""

from __future__ import annotations

import logging
from typing import Any

import mcp.types as mt

from ..core.errors import GatewayError
from ..guard import Detector, GuardPolicy
from ..guard.injection import injection_score
from .client import ToolResult

log = logging.getLogger("sluice.mcp")
_ALL = Detector()


class ResultTooLarge(GatewayError):
    status = 502
    type = "upstream_error"
    code = "mcp_result_too_large"


class ResultInjection(GatewayError):
    status = 502
    type = "upstream_error"
    code = "mcp_result_injection"


INJECTION_META = "sluice/injection"


class Guarded:
    """A result as it goes back, and what reading it found (for the call's record)."""

    __slots__ = ("body", "size", "kinds", "injection")

    def __init__(self, body: dict[str, Any], size: int, kinds: set[str], injection: float) -> None:
        self.body, self.size, self.kinds, self.injection = body, size, kinds, injection


def _detector(policy: GuardPolicy | None, identity: str, team: str | None) -> tuple[Detector, str]:
    if policy is not None:
        rules = policy.rules_for(frozenset(), identity, team)
        if rules.detector is not None and rules.output_action != "allow":
            return rules.detector, rules.output_action
    return _ALL, "mask"


def _strings(value: Any, fix: Any) -> Any:
    """``value`` with every string passed through ``fix`` (keys too: a key can carry a secret)."""
    if isinstance(value, str):
        return fix(value)
    if isinstance(value, list):
        return [_strings(v, fix) for v in value]
    if isinstance(value, dict):
        return {fix(k): _strings(v, fix) for k, v in value.items()}
    return value


def _injection(policy: GuardPolicy | None, identity: str, team: str | None) -> tuple[str, float, Any]:
    """(action, threshold, classifier) of the caller's rule set; flag at 0.5 when it has none."""
    if policy is not None:
        rules = policy.rules_for(frozenset(), identity, team)
        spec = rules.spec.injection
        return ("block" if rules.injection == "block" else "flag"), spec.threshold, rules.classifier
    return "flag", 0.5, None


def _block(block: Any, fix: Any) -> None:
    """Fix the texts of one content block (text, or an embedded text resource) in place."""
    if not isinstance(block, dict):
        return
    if block.get("type") == "text" and isinstance(block.get("text"), str):
        block["text"] = fix(block["text"])
    elif block.get("type") == "resource" and isinstance(block.get("resource", {}).get("text"), str):
        block["resource"]["text"] = fix(block["resource"]["text"])


def guard_result(result: ToolResult | mt.CallToolResult | mt.ReadResourceResult | mt.GetPromptResult, *, max_bytes: int,
                 policy: GuardPolicy | None, identity: str, team: str | None, tool: str, request_id: str) -> Guarded:
    """The result as the agent gets it (JSON-ready) and what was found in it, or ``ResultTooLarge``."""
    if isinstance(result, ToolResult):  # a tool's result from an HTTP server, as it sent it (``client.py``)
        body, size = result.body, result.size
    else:
        body = result.model_dump(mode="json", by_alias=True, exclude_none=True)
        size = len(result.model_dump_json(by_alias=True, exclude_none=True))
    if size > max_bytes:
        log.warning("mcp: request %s: %s returned %d bytes, over mcp.max_result_bytes (%d); refused",
                    request_id, tool, size, max_bytes)
        raise ResultTooLarge(f"The result of {tool} is {size} bytes, over the gateway's bound of {max_bytes}"
                             " (mcp.max_result_bytes); it was not passed on.")
    detector, action = _detector(policy, identity, team)
    kinds: set[str] = set()
    texts: list[str] = []

    done: dict[str, str] = {}  # a text read once per result (structured content often repeats the text content)

    def fix(text: str) -> str:
        out = done.get(text)
        if out is not None:
            return out
        texts.append(text)
        found = detector.find(text)
        if found:
            kinds.update(f.kind for f in found)
        out = done[text] = text if not found or action == "flag" else detector.mask(text, found)
        return out

    for block in body.get("content", []):  # a tool's result
        _block(block, fix)
    for contents in body.get("contents", []):  # a resource's
        if isinstance(contents.get("text"), str):
            contents["text"] = fix(contents["text"])
    for message in body.get("messages", []):  # a prompt's
        _block(message.get("content"), fix)
    completion = body.get("completion")  # a completion's values (completion/complete)
    if isinstance(completion, dict) and isinstance(completion.get("values"), list):
        completion["values"] = [fix(v) if isinstance(v, str) else v for v in completion["values"]]
    if "structuredContent" in body:
        body["structuredContent"] = _strings(body["structuredContent"], fix)
    if kinds:  # kinds only: the values never reach a log
        log.warning("mcp: request %s: the result of %s carries %s (%s)", request_id, tool, ",".join(sorted(kinds)), action)
    inj_action, threshold, classifier = _injection(policy, identity, team)
    score = max((injection_score(t, classifier) for t in texts), default=0.0)
    if score >= threshold:
        log.warning("mcp: request %s: the result of %s looks like instructions to the model (injection %.2f, %s)",
                    request_id, tool, score, inj_action)
        if inj_action == "block":
            raise ResultInjection(f"The result of {tool} looks like it carries instructions to the model; "
                                  "the gateway's policy refuses it.")
        body.setdefault("_meta", {})[INJECTION_META] = round(score, 3)
    else:
        score = 0.0
    return Guarded(body, size, kinds, score)
