"""The tools a request offers the model: ``tools`` and the legacy ``functions``, each a granted registry tool.

With a registry (or a rule set of the caller's own) a tool must be granted (deny by default): one
that is not is refused (400) or removed before the upstream, by the rule set's ``tools.undeclared``.
A forced choice (``tool_choice``, ``function_call``) of a removed tool goes with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from msgspec import UNSET

from ..core.wire import ChatCompletionRequest
from .refusal import refuse

if TYPE_CHECKING:
    from .inputs import InputVerdict
    from .policy import GuardPolicy, Rules


def _name(fn: Any) -> str:
    return str(fn.get("name", "")) if isinstance(fn, dict) else ""


def _forced(choice: Any) -> str | None:
    """The tool a ``tool_choice`` or ``function_call`` forces, if it names one."""
    if not isinstance(choice, dict):
        return None
    return _name(choice.get("function")) if "function" in choice else _name(choice)


def check_tool_params(rules: Rules, policy: GuardPolicy, req: ChatCompletionRequest, identity: str, team: str | None,
                      verdict: InputVerdict) -> ChatCompletionRequest:
    """The request with only granted tools and functions, or a refusal naming the first that is not."""
    changes: dict[str, Any] = {}
    for field, choice, name_of, where in (("tools", "tool_choice", lambda t: _name(t.get("function")), "tools[{}].function.name"),
                                          ("functions", "function_call", _name, "functions[{}].name")):
        offered = getattr(req, field)
        if offered is UNSET or not offered:
            continue
        kept = []
        for i, tool in enumerate(offered):
            name = name_of(tool) if isinstance(tool, dict) else ""
            entry = policy.tools.get(name)
            if entry is not None and entry.allows(identity, team):
                kept.append(tool)
                continue
            if rules.spec.tools.undeclared == "refuse":
                raise refuse("tools", f"the tool `{name[:64]}` is not in the registry or not granted to you.",
                             where.format(i))
            verdict.removed_tools.append(name[:64])
        if len(kept) == len(offered):
            continue
        changes[field] = kept or UNSET
        forced = _forced(getattr(req, choice))
        if not kept or (forced is not None and forced not in {name_of(t) for t in kept}):
            changes[choice] = UNSET
        if field == "tools" and not kept:
            changes["parallel_tool_calls"] = UNSET
    return msgspec.structs.replace(req, **changes) if changes else req
