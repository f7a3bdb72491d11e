"""The ``mcp`` section: the upstream MCP servers sluice federates, and the bounds of its MCP endpoint (issue 25)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .strict import Seconds
from .strict import Strict as _Strict

# A server's name is a path segment of /mcp/{server} and the namespace of its tools (`server__tool`).
ServerName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
# A pinned definition: the SHA-256 (hex) of a tool's canonical definition (``sluice.mcp.pins``).
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
ToolName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# required: a tool whose definition is not pinned (or changed) is quarantined; off: the server's tools are not pinned
PinMode = Literal["required", "off"]


class McpServer(_Strict):
    """One upstream MCP server over Streamable HTTP. sluice calls it with its own credential, never the caller's."""

    name: ServerName
    url: str  # the server's Streamable HTTP endpoint, e.g. http://tools.internal:8000/mcp
    credential_env: str | None = None  # the environment variable whose value goes as `Authorization: Bearer`
    prefix: ServerName | None = None  # the tools' namespace (default: the name); `prefix__tool` stays stable
    timeout_s: Seconds = 60.0  # one call's wait for the upstream
    pin: PinMode = "required"  # seeds the policy's ``mcp.pin`` for this server (issue 25, rug-pull defence)

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise msgspec.ValidationError(f"an MCP server's url must be http(s): {self.name!r} - at `$.mcp.servers`")

    @property
    def namespace(self) -> str:
        return self.prefix or self.name


class Mcp(_Strict):
    """The MCP gateway: upstream servers, session lifetime, the bound on one tool result."""

    servers: list[McpServer] = msgspec.field(default_factory=list)
    session_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 86400.0  # a sealed session id's life
    max_result_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024  # one tool result
    public_url: str | None = None  # the base URL callers reach sluice at (RFC 9728 metadata); default: the Host header
    pins: dict[ToolName, Sha256] = msgspec.field(default_factory=dict)  # seeds the policy's ``mcp.pins``
    # a tools/call is checked against the server's definitions as last listed, listed again when older than this
    pin_recheck_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0

    def __post_init__(self) -> None:
        for kind, names in (("name", [s.name for s in self.servers]), ("prefix", [s.namespace for s in self.servers])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise msgspec.ValidationError(f"duplicate MCP server {kind} {sorted(dup)[0]!r} - at `$.mcp.servers`")


class McpPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``mcp`` section of the versioned policy: which tool definitions operators approved (issue 25, item 5).

    ``pins`` maps a namespaced tool (``server__tool``) to the SHA-256 of the definition an operator approved;
    ``pin`` says per server whether its tools must be pinned (``required``, the default for a server it does
    not name) or are not checked (``off``). Seeded from the config file's ``mcp.pins`` and ``servers[].pin``."""

    pin: dict[ServerName, PinMode] = msgspec.field(default_factory=dict)
    pins: dict[ToolName, Sha256] = msgspec.field(default_factory=dict)

    def mode(self, server: str) -> PinMode:
        return self.pin.get(server, "required")
