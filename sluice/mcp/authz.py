"""Which MCP tools a caller may see and call: the tool registry of the active policy, as on the model path.

A tool is governed by its namespaced name (``server__tool``) in the policy's ``tools:`` registry:
who may call it (identities, teams), its risk, the JSON Schema of its arguments. With a registry, a
tool it does not name is nobody's (default deny) and ``tools/list`` shows only what the caller may
call; a policy version with no registry governs no tool call, MCP or model (as ``guard-in`` does).
A call is judged by ``sluice.guard.tools.judge`` itself: allowed, blocked, or held for approval.

Resources and prompts are not tools and have no registry entry: ``ContentAccess`` decides them from the
active policy's ``mcp.resources`` (URI globs) and ``mcp.prompts`` (name globs) per identity or team, default deny.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatchcase
from typing import Any

import mcp.types as mt

from ..core.mcp_config import McpPolicy
from ..guard import GuardPolicy, Judgement
from ..guard.tools import judge_value
from .jsonrpc import Refusal

SEPARATOR = "__"


def namespaced(namespace: str, tool: str) -> str:
    return f"{namespace}{SEPARATOR}{tool}"


def upstream_name(namespace: str, name: str) -> str | None:
    """The server's own name of a namespaced tool, or None when the name is not in this namespace."""
    head = namespace + SEPARATOR
    return name[len(head):] if name.startswith(head) and len(name) > len(head) else None


def owner_of(up: Any, servers: Any, name: str, kind: str) -> tuple[Any, str]:
    """The server and its own name of a namespaced tool or prompt (``server__name``): on a server's path that
    server, on ``/mcp`` (``up`` None) the one of ``servers`` whose namespace it carries, the longest first; else
    the refusal saying how a ``kind`` is named here."""
    candidates = [up] if up is not None else sorted(servers, key=lambda u: -len(u.namespace))
    for u in candidates:
        own = upstream_name(u.namespace, name)
        if own is not None:
            return u, own
    hint = f"`{up.namespace}__<{kind}>`" if up is not None else f"`<server>__<{kind}>`"
    raise Refusal(mt.INVALID_PARAMS, f"Unknown {kind} {name[:64]!r}: {kind}s here are named {hint}.", f"unknown_{kind}")


class ToolAccess:
    """Answers per caller from the policy version active at the moment of the call."""

    __slots__ = ("_policy",)

    def __init__(self, policy: Callable[[], GuardPolicy | None]) -> None:
        self._policy = policy  # the active version's compiled guard rules (None: no guardrails, no tools)

    def registry(self) -> GuardPolicy | None:
        p = self._policy()
        return p if p is not None and p.tools else None

    def visible(self, name: str, identity: str, team: str | None) -> bool:
        reg = self.registry()
        if reg is None:
            return True
        tool = reg.tools.get(name)
        return tool is not None and tool.allows(identity, team)

    def judge(self, name: str, arguments: dict[str, Any], identity: str, team: str | None,
              call_id: str = "") -> Judgement | None:
        """The registry's verdict on this call; None when no registry governs tool calls. ``arguments`` as the
        body's JSON decoder read them: judged as they are (``judge_value``), with no JSON round trip."""
        reg = self.registry()
        if reg is None:
            return None
        return judge_value(reg, identity, team, name, arguments, call_id)


class ContentAccess:
    """Which resources (by URI glob) and prompts (by name glob) of a server a caller may reach: the grants of the
    active policy version's ``mcp`` section (``mcp.resources``, ``mcp.prompts``), read at each request. What no
    grant names for the caller is nobody's: with no grant at all, no caller reaches anything (default deny)."""

    __slots__ = ("_section",)

    def __init__(self, section: Callable[[], McpPolicy | None]) -> None:
        self._section = section  # the active version's ``mcp`` section (None: no policy yet, so no grant)

    def resource(self, server: str, uri: str, identity: str, team: str | None) -> bool:
        p = self._section()
        return p is not None and any(
            g.server == server and g.names_caller(identity, team) and any(fnmatchcase(uri, pat) for pat in g.uris)
            for g in p.resources)

    def prompt(self, server: str, name: str, identity: str, team: str | None) -> bool:
        p = self._section()
        return p is not None and any(
            g.server == server and g.names_caller(identity, team) and any(fnmatchcase(name, pat) for pat in g.names)
            for g in p.prompts)
