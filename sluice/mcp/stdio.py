"""Stdio MCP servers that sluice starts itself, sandboxed (issue 25, item 2).

A server is the ``mcp`` SDK's stdio client transport around ``python -I launch.py ... -- COMMAND``: the
launcher (``launch.py``) gives the process a network namespace of its own (``network: deny``, the
default), resource limits, no new privileges and a session of its own, then execs the allow-listed
command with exactly the environment listed here: the server's ``env`` and PATH, LANG, HOME and TMPDIR
pointing into its private directory (``state_dir/<name>``, mode 0700). Nothing of sluice's own
environment (the pepper, upstream keys, admin keys, ``SLUICE_*``) is passed.

Whether this machine can make a network namespace is tried once, at start (``probe``). Where it cannot
(a container without user namespaces, a seccomp profile refusing ``unshare``, no CAP_SYS_ADMIN), a
``network: deny`` server stops the start unless ``mcp.allow_unsandboxed`` is true, which is logged as a
warning and runs it with the network.

Its stderr is relayed to sluice's log line by line (masked, each line and the rate bounded); the end
of that pipe is how sluice learns the process died, and it is restarted with a bounded backoff.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from mcp.client.stdio import StdioServerParameters, stdio_client

from ..core.env_refs import expand
from ..core.errors import ConfigError
from ..core.mcp_config import STDIO_PATH, Mcp, McpServer, executable
from ..guard.approvals import MASK

log = logging.getLogger("sluice.mcp")
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launch.py")
LINE_MAX = 1024  # one stderr line in the log, at most
LINES_PER_WINDOW, WINDOW_S = 50, 10.0  # beyond it, lines are counted and dropped
BACKOFF_MIN_S, BACKOFF_MAX_S, STEADY_S = 0.5, 30.0, 30.0


@dataclass(frozen=True)
class Sandbox:
    """What this machine allows: a network namespace for the servers (``how``) or not (``why``)."""

    isolated: bool
    detail: str


def probe() -> Sandbox:
    """Try once to make a network namespace, in a child (unshare needs a single-threaded process)."""
    try:
        done = subprocess.run([sys.executable, "-I", LAUNCHER, "--probe"], capture_output=True, text=True,
                              timeout=10, env={}, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Sandbox(False, f"the probe did not run: {type(exc).__name__}")
    return Sandbox(done.returncode == 0, (done.stdout.strip() or done.stderr.strip())[:200])


def sandbox_for(cfg: Mcp) -> Sandbox | None:
    """Probe once at start when stdio servers may run here (``allowed_commands``); what it finds is logged. Whether a
    ``network: deny`` server may then run without it is ``mcp_config.unrunnable``'s to say (``allow_unsandboxed``)."""
    if not cfg.allowed_commands:
        return None
    box = probe()
    if box.isolated:
        log.info("mcp: stdio servers with network: deny run without network: each in a new %s", box.detail)
    elif cfg.allow_unsandboxed:
        log.warning("mcp: this machine cannot isolate the network (%s); allow_unsandboxed is set, so stdio "
                    "servers with network: deny run WITH network access", box.detail)
    else:
        log.warning("mcp: this machine cannot isolate the network (%s): a stdio server with network: deny is not "
                    "started", box.detail)
    return box


def private_dir(state_dir: str, name: str) -> str:
    """``state_dir/name``, made if missing, owned by this uid, mode 0700 (a symlink or another's dir is refused)."""
    base = os.path.abspath(state_dir)
    os.makedirs(base, mode=0o700, exist_ok=True)
    path = os.path.join(base, name)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(f"MCP server {name!r}: {path} is not a directory of this user - at `$.mcp.state_dir`")
    os.chmod(path, 0o700)
    os.makedirs(os.path.join(path, "tmp"), mode=0o700, exist_ok=True)
    return path


class StdioServer:
    """How one stdio server is started: its launcher argv and environment, its stderr relay, its backoff."""

    def __init__(self, spec: McpServer, cfg: Mcp, sandbox: Sandbox | None) -> None:
        assert spec.command is not None
        self.spec = spec
        self.home = private_dir(cfg.state_dir, spec.name)
        found = spec.command[0] if os.path.isabs(spec.command[0]) else shutil.which(spec.command[0], path=STDIO_PATH)
        deny = spec.network == "deny" and sandbox is not None and sandbox.isolated
        lim = spec.limits
        limits = {"AS": lim.memory_mb << 20, "NOFILE": lim.open_files, "NPROC": lim.processes, "CPU": lim.cpu_s,
                  "FSIZE": lim.file_size_mb << 20}
        # the references its env holds (``${NAME}``) are resolved here, on this replica: the policy stores them as written
        env = {k: expand(v, f"$.mcp.servers.{spec.name}.env.{k}") for k, v in spec.env.items()}
        self.env = {**env, "PATH": STDIO_PATH, "LANG": "C.UTF-8", "HOME": self.home,
                    "TMPDIR": os.path.join(self.home, "tmp")}
        self.args = ["-I", LAUNCHER, f"--network={'deny' if deny else 'allow'}",
                     "--limits=" + ",".join(f"{k}:{v}" for k, v in limits.items()),
                     "--keep=" + ",".join(sorted(self.env)), f"--expect={executable(spec.command[0])}",
                     "--", found or spec.command[0], *spec.command[1:]]
        self.cwd = spec.cwd or self.home
        self._failures = 0
        self.started_at = 0.0

    @asynccontextmanager
    async def transport(self) -> AsyncIterator[tuple[Any, asyncio.Event]]:
        """The SDK's stdio transport for one run of the server, and an event set when the process is gone."""
        died = asyncio.Event()
        rfd, wfd = os.pipe()
        errlog = os.fdopen(wfd, "wb", buffering=0)
        relay = _StderrRelay(self.spec.name, died)
        loop = asyncio.get_running_loop()
        await loop.connect_read_pipe(lambda: relay, os.fdopen(rfd, "rb", buffering=0))
        params = StdioServerParameters(command=sys.executable, args=self.args, env=self.env, cwd=self.cwd)
        self.started_at = time.monotonic()
        try:
            async with stdio_client(params, errlog=errlog) as streams:  # type: ignore[arg-type]
                errlog.close()  # the child holds its copy: the pipe ends when the process does
                yield streams, died
        finally:
            if not errlog.closed:
                errlog.close()

    def backoff(self) -> float:
        """The wait before the next start: doubling from 0.5 s to 30 s while it keeps dying, reset once it ran 30 s."""
        if time.monotonic() - self.started_at >= STEADY_S:
            self._failures = 0
        delay = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** self._failures)
        self._failures += 1
        return delay


class _StderrRelay(asyncio.Protocol):
    """The server's stderr into sluice's log: line by line, masked (the log's own masker and the detectors),
    each line cut at LINE_MAX, at most LINES_PER_WINDOW lines per WINDOW_S; the pipe's end sets ``died``."""

    def __init__(self, name: str, died: asyncio.Event) -> None:
        self._name, self._died = name, died
        self._buf = b""
        self._window, self._count, self._dropped = 0.0, 0, 0

    def data_received(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > LINE_MAX:  # a line without end is logged in pieces, never held whole
            lines.append(self._buf)
            self._buf = b""
        for line in lines:
            self._emit(line)

    def _emit(self, raw: bytes) -> None:
        now = time.monotonic()
        if now - self._window >= WINDOW_S:
            if self._dropped:
                log.warning("mcp: server %s: %d stderr lines dropped (over %d per %g s)", self._name,
                            self._dropped, LINES_PER_WINDOW, WINDOW_S)
            self._window, self._count, self._dropped = now, 0, 0
        self._count += 1
        if self._count > LINES_PER_WINDOW:
            self._dropped += 1
            return
        text = raw[:LINE_MAX].decode("utf-8", "replace").rstrip("\r")
        if text:
            log.info("mcp: server %s: %s", self._name, MASK.mask(text))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buf:
            self._emit(self._buf)
        self._died.set()
