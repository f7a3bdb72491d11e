"""The ``mcp`` section: the upstream MCP servers sluice federates, and the bounds of its MCP endpoint (issue 25)."""

from __future__ import annotations

import os
import shutil
from typing import Annotated, ClassVar, Literal
from urllib.parse import urlsplit

import msgspec

from .env_refs import ENV_REF
from .routing_config import Capacity
from .strict import Seconds
from .strict import Strict as _Strict

# A server's name is a path segment of /mcp/{server} and the namespace of its tools (`server__tool`).
ServerName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
# A stdio server's path and locale are sluice's, not the caller's or the server's to choose.
RESERVED_ENV = frozenset({"PATH", "HOME", "TMPDIR", "LANG"})


class StdioLimits(_Strict):
    """Resource limits of a stdio server's process (setrlimit, set by the launcher before it execs the command)."""

    memory_mb: Annotated[int, msgspec.Meta(ge=64)] = 2048  # RLIMIT_AS: address space, not resident memory
    open_files: Annotated[int, msgspec.Meta(ge=16)] = 256  # RLIMIT_NOFILE
    processes: Annotated[int, msgspec.Meta(ge=1)] = 512  # RLIMIT_NPROC: counts every process of the uid
    cpu_s: Annotated[int, msgspec.Meta(ge=1)] = 3600  # RLIMIT_CPU: a server past it is killed, then restarted
    file_size_mb: Annotated[int, msgspec.Meta(ge=1)] = 64  # RLIMIT_FSIZE: the largest file it may write
# A pinned definition: the SHA-256 (hex) of a tool's canonical definition (``sluice.mcp.pins``).
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
ToolName = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# required: a tool whose definition is not pinned (or changed) is quarantined; off: the server's tools are not pinned
PinMode = Literal["required", "off"]


class McpServer(_Strict):
    """One upstream MCP server: over Streamable HTTP (``url``), or over stdio from a ``command`` sluice starts
    itself in a sandbox. sluice calls it with its own credential, never the caller's. An entry of the policy's
    ``mcp.servers`` (seeded from the config file's, then changed only by change sets)."""

    name: ServerName
    url: str | None = None  # the server's Streamable HTTP endpoint, e.g. http://tools.internal:8000/mcp
    credential_env: str | None = None  # the environment variable whose value goes as `Authorization: Bearer`
    # mint: sluice sends a token it signs itself (the keys of /v1/token), `aud` the server's url, minted again
    # after two thirds of `credential_ttl_s`; a server without either gets no Authorization header
    credential: Literal["mint"] | None = None
    credential_ttl_s: Annotated[float, msgspec.Meta(ge=10, le=3600)] = 300.0
    prefix: ServerName | None = None  # the tools' namespace (default: the name); `prefix__tool` stays stable
    timeout_s: Seconds = 60.0  # one call's wait for the upstream
    # stdio: argv whose executable is in `mcp.allowed_commands`; the only environment it gets besides PATH,
    # LANG, HOME and TMPDIR (values may be `${ENV}`); its working directory (default: its private directory)
    command: list[str] | None = None
    env: dict[EnvName, str] = msgspec.field(default_factory=dict)
    cwd: str | None = None
    network: Literal["deny", "allow"] = "deny"  # deny: a network namespace of its own, with nothing in it
    limits: StdioLimits = msgspec.field(default_factory=StdioLimits)
    # tools/call in flight to this server from one replica, and the fair queue in front of them (sluice.mcp.limits)
    capacity: Capacity | None = None

    def __post_init__(self) -> None:
        at = f"{self.name!r} - at `$.mcp.servers`"
        if (self.url is None) == (self.command is None):
            raise msgspec.ValidationError(f"an MCP server needs exactly one of url and command: {at}")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise msgspec.ValidationError(f"an MCP server's url must be http(s): {at}")
        if self.url is not None and "@" in urlsplit(self.url).netloc:  # it would be stored in the policy
            raise msgspec.ValidationError(f"an MCP server's url carries no credential (user:password@); use "
                                          f"credential_env: {at}")
        if self.credential and self.credential_env:
            raise msgspec.ValidationError(f"an MCP server has one credential: credential_env or credential: mint: {at}")
        if self.command is not None:
            if not self.command or not self.command[0]:
                raise msgspec.ValidationError(f"an MCP server's command is an argv list, its executable first: {at}")
            if self.credential_env or self.credential:
                raise msgspec.ValidationError(f"credential_env and credential are for servers over HTTP; give a stdio "
                                              f"server its credential in env: {at}")
            if self.cwd is not None and not os.path.isabs(self.cwd):
                raise msgspec.ValidationError(f"an MCP server's cwd must be an absolute path: {at}")
            reserved = sorted(RESERVED_ENV & set(self.env))
            if reserved:
                raise msgspec.ValidationError(f"an MCP server's env may not set {reserved[0]} (sluice sets it): {at}")
        elif self.env or self.cwd is not None:
            raise msgspec.ValidationError(f"env and cwd are for stdio servers (command): {at}")

    @property
    def namespace(self) -> str:
        return self.prefix or self.name

    @property
    def stdio(self) -> bool:
        return self.command is not None


class McpServerSeed(McpServer):
    """A server as the config file writes it: the policy's entry, and the pin mode it seeds ``mcp.pin`` with."""

    pin: PinMode = "required"  # seeds the policy's ``mcp.pin`` for this server (issue 25, rug-pull defence)

    def entry(self) -> McpServer:
        """The policy's entry for this server (its pin mode goes to ``mcp.pin``)."""
        return McpServer(**{f: getattr(self, f) for f in McpServer.__struct_fields__})


def executable(command: str) -> str:
    """The file a command names, symlinks resolved (a bare name is looked up on the stdio servers' PATH)."""
    found = command if os.path.isabs(command) else shutil.which(command, path=STDIO_PATH)
    return os.path.realpath(found) if found else command


STDIO_PATH = "/usr/local/bin:/usr/bin:/bin"


Rate = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000)]


class McpLimits(_Strict):
    """Bounds on tool calls, counted by the limiter of the model calls (its backend: memory or Redis).

    Kept apart from ``limits.rules`` so that a rule written for model calls never starts counting tool
    calls by accident: each knob here is one rule over MCP calls only."""

    calls_per_minute_per_identity: Rate | None = None  # every tools/call of one identity, any server
    calls_per_minute_per_tool: Rate | None = None  # one namespaced tool, every caller together
    calls_per_minute_per_identity_per_tool: Rate | None = None  # one identity's calls to one namespaced tool
    concurrency_per_server: Rate | None = None  # tools/call in flight to one server, every caller together


class McpStreams(_Strict):
    """The server-to-client streams callers open with ``GET /mcp[/{server}]`` (list_changed notifications)."""

    per_identity: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = 16  # open at once by one identity (over: 429)
    total: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1000  # open at once on this replica (over: 503)
    keepalive_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 15.0  # a comment on a quiet stream this often


class _Grant(_Strict):
    """Who (identities, teams; ``*``: everyone) may reach which of one server's resources or prompts."""

    server: ServerName
    identities: list[str] = msgspec.field(default_factory=list)
    teams: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.identities and not self.teams:
            raise msgspec.ValidationError(f"a grant of MCP server {self.server!r} names identities or teams - at "
                                          f"`$.mcp.{self.KIND}`")

    def names_caller(self, identity: str, team: str | None) -> bool:
        return "*" in self.identities or identity in self.identities or (team is not None and team in self.teams)


class ResourceGrant(_Grant):
    """``uris``: glob patterns (``fnmatch``) over resource URIs and resource templates' URI templates."""

    KIND: ClassVar[str] = "resources"

    uris: list[str] = msgspec.field(default_factory=list)


class PromptGrant(_Grant):
    """``names``: glob patterns over the server's own prompt names (not the ``server__`` namespaced ones)."""

    KIND: ClassVar[str] = "prompts"

    names: list[str] = msgspec.field(default_factory=list)


class Mcp(_Strict):
    """The MCP gateway: upstream servers, session lifetime, the bound on one tool result, the stdio sandbox."""

    servers: list[McpServerSeed] = msgspec.field(default_factory=list)  # seed the policy's ``mcp.servers`` once
    session_ttl_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 86400.0  # a sealed session id's life
    max_result_bytes: Annotated[int, msgspec.Meta(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024  # one tool result
    public_url: str | None = None  # the base URL callers reach sluice at (RFC 9728 metadata); default: the Host header
    limits: McpLimits = msgspec.field(default_factory=McpLimits)
    streams: McpStreams = msgspec.field(default_factory=McpStreams)  # GET streams (``sluice.mcp.notify``)
    # how long a replica trusts "this session was not ended" before asking the store again (0: every request)
    ended_check_s: Annotated[float, msgspec.Meta(ge=0, le=60)] = 1.0
    max_recorded_result_chars: Annotated[int, msgspec.Meta(ge=0, le=1024 * 1024)] = 4096  # of the masked result, per call
    allowed_commands: list[str] = msgspec.field(default_factory=list)  # absolute paths stdio servers may run
    allow_unsandboxed: bool = False  # run `network: deny` servers even where no network namespace can be made
    state_dir: str = ".sluice/mcp"  # each stdio server's private directory is made under it (mode 0700)
    pins: dict[ToolName, Sha256] = msgspec.field(default_factory=dict)  # seeds the policy's ``mcp.pins``
    # a tools/call is checked against the server's definitions as last listed, listed again when older than this
    pin_recheck_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0
    # who reads which resources and gets which prompts: seed the policy's ``mcp.resources`` / ``mcp.prompts`` once
    # (then only change sets change them); what no grant names is nobody's, so with none, nobody may
    resources: list[ResourceGrant] = msgspec.field(default_factory=list)
    prompts: list[PromptGrant] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        _unique(self.servers)
        for path in self.allowed_commands:
            if not os.path.isabs(path):
                raise msgspec.ValidationError(f"allowed_commands must be absolute paths: {path!r} - at "
                                              f"`$.mcp.allowed_commands`")
        names = {s.name for s in self.servers}
        for kind, grants in (("resources", self.resources), ("prompts", self.prompts)):
            for g in grants:
                if g.server not in names:
                    raise msgspec.ValidationError(f"grant for unknown MCP server {g.server!r} - at `$.mcp.{kind}`")
        for s in self.servers:
            if s.command is not None and not self.allows(s.command[0]):
                raise msgspec.ValidationError(f"MCP server {s.name!r} runs {s.command[0]!r}, which is not in "
                                              f"allowed_commands - at `$.mcp.servers`")

    def allows(self, command: str) -> bool:
        """Whether a stdio server may run ``command`` (its executable, resolved, is in ``allowed_commands``)."""
        return executable(command) in {os.path.realpath(p) for p in self.allowed_commands}


def capacities(servers: list[McpServer]) -> dict[str, Capacity]:
    """The fair queues the servers ask for (``servers[].capacity``), by server."""
    return {s.name: s.capacity for s in servers if s.capacity is not None}


def _unique(servers: list[McpServer]) -> None:
    for kind, names in (("name", [s.name for s in servers]), ("prefix", [s.namespace for s in servers])):
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise msgspec.ValidationError(f"duplicate MCP server {kind} {sorted(dup)[0]!r} - at `$.mcp.servers`")


def unrunnable(cfg: Mcp, s: McpServer, no_sandbox: str | None) -> str | None:
    """Why this replica cannot run server ``s`` as its config stands (None: it can). The config file keeps what is
    security: a stdio command must be in its ``allowed_commands``, a ``network: deny`` server needs the sandbox (or
    ``allow_unsandboxed``); and a credential named by ``credential_env`` or an ``env`` reference must be set here.
    ``no_sandbox``: why this machine cannot make a network namespace (None: it can, or nobody asked)."""
    at = f"MCP server {s.name!r}"
    if s.command is not None:
        if not cfg.allows(s.command[0]):
            return (f"{at} runs {s.command[0]!r}, which is not in the config file's mcp.allowed_commands (a stdio "
                    f"command is allowed there only)")
        if s.network == "deny" and no_sandbox is not None and not cfg.allow_unsandboxed:
            return (f"{at} has network: deny, but this machine cannot make a network namespace ({no_sandbox}); set "
                    f"network: allow on it, or mcp.allow_unsandboxed: true in the config file")
        for name, value in s.env.items():
            for ref in ENV_REF.finditer(value):
                if ref.group(2) is None and not os.environ.get(ref.group(1)):
                    return f"{at}: env {name} names the environment variable {ref.group(1)}, which is unset here"
    if s.credential_env and not os.environ.get(s.credential_env):
        return f"{at}: the environment variable {s.credential_env!r} (credential_env) is unset here"
    return None


def refusal(cfg: Mcp, before: list[McpServer], after: list[McpServer], no_sandbox: str | None,
            rollback: bool = False) -> str | None:
    """Why a policy change's servers are refused on this replica (None: taken). Only the servers it adds or changes
    are judged; an existing server keeps its namespace, so its tools' names (``server__tool``) never change under
    the registry, the pins and the agents that use them (a rollback restores an earlier version's as they were)."""
    old = {s.name: s for s in before}
    for s in after:
        was = old.get(s.name)
        if was == s:
            continue
        if was is not None and was.namespace != s.namespace and not rollback:
            return (f"MCP server {s.name!r} keeps its namespace {was.namespace!r} (its tools are named "
                    f"{was.namespace}__tool); remove it and add a server of another name to change it")
        why = unrunnable(cfg, s, no_sandbox)
        if why is not None:
            return why
    return None


class McpPolicy(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``mcp`` section of the versioned policy (issue 25): which definitions operators approved (item 5), and
    who may reach which resources and prompts (item 4).

    ``pins`` maps a namespaced tool (``server__tool``) to the SHA-256 of the definition an operator approved;
    ``pin`` says per server whether its tools must be pinned (``required``, the default for a server it does
    not name) or are not checked (``off``). ``resources`` (URI globs) and ``prompts`` (name globs) grant a
    server's resources and prompts per identity or team; what no grant names is nobody's (default deny).
    ``servers`` are the upstream servers each replica runs (item 2): a change set adds, changes or removes one,
    and every replica reconciles its live sessions when it activates the version (``sluice.mcp.upstreams``).
    Seeded once from the config file's ``mcp.pins``, ``servers`` (their ``pin``), ``mcp.resources`` and
    ``mcp.prompts``."""

    pin: dict[ServerName, PinMode] = msgspec.field(default_factory=dict)
    pins: dict[ToolName, Sha256] = msgspec.field(default_factory=dict)
    resources: list[ResourceGrant] = msgspec.field(default_factory=list)
    prompts: list[PromptGrant] = msgspec.field(default_factory=list)
    servers: list[McpServer] = msgspec.field(default_factory=list)  # the upstream servers, in the order /mcp asks them

    def __post_init__(self) -> None:
        _unique(self.servers)

    def mode(self, server: str) -> PinMode:
        return self.pin.get(server, "required")
