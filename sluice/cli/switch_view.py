"""The incident switches as people read them: what is switched, then who set it, when and why.

Two short lines a switch, never a wide table, so a list reads whole at 80 columns and in a pipe.
"""

from __future__ import annotations

import time
from typing import Any

_UNITS = {"requests_per_minute": "requests/min", "input_tokens_per_minute": "input tokens/min",
          "output_tokens_per_minute": "output tokens/min", "concurrent_requests": "in flight"}


def iso(ts: float | None) -> str:
    """Seconds since the epoch as ISO 8601 UTC (``—`` when unknown)."""
    return "—" if ts is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def limit_text(limit: dict[str, Any]) -> str:
    """``600 requests/min, 4 in flight, per identity`` (or ``for the model as a whole``)."""
    caps = [f"{limit[k]} {unit}" for k, unit in _UNITS.items() if limit.get(k)]
    per = limit.get("per") or []
    return ", ".join(caps) + (", per " + " and ".join(per) if per else ", for the model as a whole")


def what(item: dict[str, Any]) -> str:
    """The first line: the switch and its setting."""
    kind, name = item["kind"], item["name"]
    if kind == "freeze":
        return "control plane frozen: only switches and rollback are taken"
    if kind in ("target", "route"):
        where = f"its traffic goes to {item['fallback']}" if item.get("fallback") else "it answers 503"
        return f"{kind} {name} switched off: {where}"
    return f"model {name} limited to {limit_text(item.get('limit') or {})}"


def who(item: dict[str, Any]) -> str:
    """The second line: who set it, when, in which version, and why."""
    if item.get("set_by") is None:
        return f"set before version {item['version']} (older than the history looked at)"
    reason = f": {item['reason']}" if item.get("reason") else ""
    return f"set by {item['set_by']} at {iso(item.get('set_at'))} (version {item['version']}){reason}"


def switch_lines(items: list[dict[str, Any]]) -> list[str]:
    if not items:
        return ["no switch in force"]
    out: list[str] = []
    for item in items:
        out += [what(item), "    " + who(item)]
    return out
