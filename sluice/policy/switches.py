"""The incident switches in force, each with the version that put it there: who, when and why.

A switch lives in the policy document (``switches`` and the ``switch-MODEL`` limit rules), so whichever
path set it (a switch command, a change set, a rollback that restored it) is a version. Walking back from
the active version along ``parent`` finds the oldest version of the unbroken run in which the switch
held its present value: that version's author, time and reason are who set it, when and why.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..store import Store
from .document import SWITCH_LIMIT as SWITCH_RULE  # the prefix of the limit rules `switch limit` writes
from .document import PolicyDocument, decode

_WALK = 500  # versions looked at, at most: an older switch reads "set before version N"


def switch_rule(model: str) -> str:
    """The limit rule a model's switch limit is kept under."""
    return SWITCH_RULE + "".join(c if c.isalnum() or c in "._-" else "_" for c in model)[:57]


def _positions(doc: PolicyDocument) -> dict[tuple[str, str], Any]:
    """Every switch of a document in force: (kind, name) -> its value (fallback, limit rule, True)."""
    s = doc.switches
    out: dict[tuple[str, str], Any] = {}
    if s.frozen:
        out[("freeze", "control-plane")] = True
    for target, fallback in s.disabled_targets.items():
        out[("target", target)] = fallback
    for route, fallback in s.disabled_routes.items():
        out[("route", route)] = fallback
    for rule in doc.limits.rules:
        if rule.name.startswith(SWITCH_RULE):
            out[("limit", rule.match.get("model", rule.name[len(SWITCH_RULE):]))] = msgspec.to_builtins(rule)
    return out


async def in_force(store: Store, version: int, doc: PolicyDocument) -> list[dict[str, Any]]:
    """The switches of ``doc`` (version ``version``), each with ``set_by``, ``set_at``, ``reason`` and the
    ``version`` that set it; ``set_by`` None when that version is older than the walk looks."""
    now = _positions(doc)
    if not now:
        return []
    since = {k: version for k in now}  # the oldest version seen holding each switch's present value
    open_ = set(now)
    current = await store.policy_version(version)
    rows: dict[int, dict] = {version: current} if current else {}
    parent = current.get("parent") if current else None
    cut = False  # the walk stopped before it found where every switch began
    for _ in range(_WALK + 1):
        if not open_ or not parent:
            break
        row = await store.policy_version(parent) if len(rows) <= _WALK else None
        if row is None:
            cut = True
            break
        rows[parent] = row
        then = _positions(decode(row["document"]))
        for k in list(open_):
            if k in then and then[k] == now[k]:
                since[k] = parent
            else:
                open_.discard(k)
        parent = row.get("parent")
    out = []
    for (kind, name), value in now.items():
        row = None if cut and (kind, name) in open_ else rows.get(since[kind, name])
        item: dict[str, Any] = {"kind": kind, "name": name, "version": since[kind, name],
                                "set_by": row["author"] if row else None, "set_at": row["created_at"] if row else None,
                                "reason": row["reason"] if row else None}
        if kind in ("target", "route"):
            item["fallback"] = value
        elif kind == "limit":
            item["limit"] = {k: v for k, v in value.items() if k not in ("name", "match") and v is not None}
            item["rule"] = value["name"]
        out.append(item)
    return out
