"""The ``mcp`` section: the upstream MCP servers sluice federates, and the bounds of its MCP endpoint (issue 25)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from .strict import Seconds
from .strict import Strict as _Strict

# A server's name is a path segment of /mcp/{server} and the namespace of its tools (`server__tool`).
ServerName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]


class McpServer(_Strict):
    """One upstream MCP server over Streamable HTTP. sluice calls it with its own credential, never the caller's."""

    name: ServerName
    url: str  # the server's Streamable HTTP endpoint, e.g. http://tools.internal:8000/mcp
    credential_env: str | None = None  # the environment variable whose value goes as `Authorization: Bearer`
    prefix: ServerName | None = None  # the tools' namespace (default: the name); `prefix__tool` stays stable
    timeout_s: Seconds = 60.0  # one call's wait for the upstream

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise msgspec.ValidationError(f"an MCP server's url must be http(s): {self.name!r} - at `$.mcp.servers`")

    @property
    def namespace(self) -> str:
        return self.prefix or self.name


Rate = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]


class McpLimits(_Strict):
    """Bounds on tool calls, counted by the limiter of the model calls (its backend: memory or Redis).

    Kept apart from ``limits.rules`` so that a rule written for model calls never starts counting tool
    calls by accident: each knob here is one rule over MCP calls only."""

    calls_per_minute_per_identity: Rate | None = None  # every tools/call of one identity, any server
    calls_per_minute_per_tool: Rate | None = None  # one namespaced tool, every caller together
    concurrency_per_server: Rate | None = None  # tools/call in flight to one server, every caller together


class Mcp(_Strict):
    """The MCP gateway: upstream servers, session lifetime, the bound on one tool result."""

    servers: list[McpServer] = msgspec.field(default_factory=list)
    session_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 86400.0  # a sealed session id's life
    max_result_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024  # one tool result
    public_url: str | None = None  # the base URL callers reach sluice at (RFC 9728 metadata); default: the Host header
    limits: McpLimits = msgspec.field(default_factory=McpLimits)
    # how long a replica trusts "this session was not ended" before asking the store again (0: every request)
    ended_check_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    max_recorded_result_chars: Annotated[int, msgspec.Meta(ge=0, le=1024 * 1024)] = 4096  # of the masked result, per call

    def __post_init__(self) -> None:
        for kind, names in (("name", [s.name for s in self.servers]), ("prefix", [s.namespace for s in self.servers])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise msgspec.ValidationError(f"duplicate MCP server {kind} {sorted(dup)[0]!r} - at `$.mcp.servers`")
