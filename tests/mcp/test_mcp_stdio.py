"""Stdio MCP servers that sluice starts itself, sandboxed (issue 25, item 2): tests/mcp/stdio_server.py (fastmcp)
launched by a real sluice process, called through the gateway by the ``mcp`` SDK's client.

The tools work through sluice; the server cannot reach a listener on this machine's loopback where a network
namespace can be made (the test prints which case ran), and where it cannot, sluice refuses to start it unless
``allow_unsandboxed`` says so; none of sluice's secrets is in its environment; its working directory is private;
a command off the allow-list is a config error; a killed server is started again; its stderr is logged masked."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support import PEPPER, start_gateway
from test_mcp_gateway import agent, text_of

HERE = Path(__file__).parent
SERVER = [sys.executable, str(HERE / "stdio_server.py")]
SIM_KEY = "sk-upstream-key-of-sluice-4b1d9e7f0a"  # an upstream api_key sluice holds
LOCAL_TOKEN = "local-server-credential-93ac11e0"  # the one secret the server is given, by its env
GITHUB = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"
ENV = {"SIM_KEY": SIM_KEY, "LOCAL_TOKEN": LOCAL_TOKEN, "SLUICE_SECRET_THING": "sluice-own-setting-5511"}


def isolation() -> tuple[bool, str]:
    """What this machine allows, asked the way sluice asks (its launcher's probe)."""
    done = subprocess.run([sys.executable, "-I", str(HERE.parent.parent / "sluice/mcp/launch.py"), "--probe"],
                          capture_output=True, text=True, env={})
    return done.returncode == 0, done.stdout.strip()


def mcp_config(**over) -> dict:
    # pin: off - these tests are about the sandbox, not definitions (tests/mcp/test_mcp_pins.py pins)
    server = {"name": "local", "command": SERVER, "env": {"GREETING": "hello", "LOCAL_TOKEN": "${LOCAL_TOKEN}"}, "pin": "off"}
    return {"mcp": {"servers": [{**server, **over.pop("server", {})}], "allowed_commands": [sys.executable], **over}}


def gateway(tmp: Path, sim, **over):
    return start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "api_key": "${SIM_KEY}"}],
                         models=[{"name": "m", "upstream": "sim"}],
                         identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                         extra=mcp_config(**over), env=ENV)


@pytest.fixture(scope="module")
def gw(sim, tmp_path_factory):
    if not isolation()[0]:
        pytest.skip("this machine cannot make a network namespace: see test_network_isolation")
    g = gateway(tmp_path_factory.mktemp("mcp-stdio"), sim)
    yield g
    g.stop()


class Listener:
    """A TCP listener on this machine's loopback; ``accepted()`` says whether anything connected."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]

    def accepted(self) -> bool:
        try:
            self.sock.accept()[0].close()
            return True
        except socket.timeout:
            return False


async def test_network_isolation(sim, tmp_path):
    isolated, how = isolation()
    if not isolated:  # where it cannot be had, a deny server is not started at all
        print(f"\nCASE: no network namespace on this machine ({how}): sluice must refuse the server")
        done = serve_once(tmp_path, sim)
        assert done.returncode != 0 and "allow_unsandboxed" in done.stdout, done.stdout
        return
    print(f"\nCASE: sandbox available ({how}): the stdio server must not reach the loopback listener")
    g = gateway(tmp_path, sim)
    try:
        listener = Listener()
        async with agent(g, g.keys["agent"], "local") as a:
            got = text_of(await a.call_tool("local__connect", {"port": listener.port}))
        assert got.startswith("failed:") and not listener.accepted(), got
        assert "network isolated (user+network namespace)" in g.log() or "network isolated (network namespace)" in g.log()
    finally:
        g.stop()


def serve_once(tmp: Path, sim, wrapper: list[str] = (), **over) -> subprocess.CompletedProcess:
    """``sluice serve`` with a stdio server, run until it exits or 20 s pass (then stopped, rc -15)."""
    config = {"data_plane": {"port": 0}, "control_plane": {"port": 0}, "store": {"url": f"sqlite:///{tmp}/s.db"},
              "security": {"pepper": PEPPER}, "logging": {"level": "info", "format": "text"},
              "upstreams": [{"name": "sim", "base_url": sim.url + "/v1"}], "models": [{"name": "m", "upstream": "sim"}],
              **mcp_config(**over)}
    path = tmp / "sluice.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen([*wrapper, sys.executable, "-m", "sluice", "serve", "--config", str(path)], cwd=tmp,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **ENV})
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


# A machine without the sandbox, made here: a user namespace that may make no more user namespaces, its root
# without capabilities (so no bare network namespace either). What a container with seccomp/no userns looks like.
NO_NAMESPACES = ["unshare", "-r", "sh", "-c", 'echo 0 > /proc/sys/user/max_user_namespaces && exec setpriv '
                 '--bounding-set=-all --inh-caps=-all --securebits=+noroot,+noroot_locked,+no_setuid_fixup "$@"', "-"]


def test_without_namespaces_a_deny_server_stops_the_start_unless_allow_unsandboxed(sim, tmp_path):
    if not (shutil.which("unshare") and shutil.which("setpriv")) or not isolation()[0]:
        pytest.skip("needs unshare(1) and setpriv(1) and user namespaces to build a machine without them")
    refused = serve_once(tmp_path, sim, NO_NAMESPACES)
    assert refused.returncode not in (0, -15), refused.stdout
    assert "'local' has network: deny, but this machine cannot make a network namespace" in refused.stdout, refused.stdout
    assert "allow_unsandboxed" in refused.stdout
    waived = serve_once(tmp_path, sim, NO_NAMESPACES, allow_unsandboxed=True)
    assert "cannot isolate the network" in waived.stdout and "WITH network access" in waived.stdout, waived.stdout
    assert "server local: sluice-launch: pid" in waived.stdout and "network allowed" in waived.stdout, waived.stdout


async def test_the_server_gets_none_of_sluices_secrets_only_its_own_env(gw):
    async with agent(gw, gw.keys["agent"], "local") as a:
        got = (await a.call_tool("local__environment", {})).structured_content
    assert got["names"] == ["GREETING", "HOME", "LANG", "LOCAL_TOKEN", "PATH", "TMPDIR"], got
    assert got["greeting"] == "hello"
    env = json.loads((Path(got["cwd"]) / "env.json").read_text())  # read from disk: not through the result masker
    assert env["LOCAL_TOKEN"] == LOCAL_TOKEN and env["HOME"] == got["cwd"]
    dump = json.dumps(env)
    for secret in (PEPPER, SIM_KEY, gw.admin_key, *gw.keys.values(), "sluice-own-setting-5511", "SLUICE_"):
        assert secret not in dump
    # the config file seeded the policy's `mcp.servers` with the reference as written, never the secret (issue 25)
    policy = gw.admin("GET", "/admin/policy/versions/active", params={"format": "json"})
    assert policy.status_code == 200 and LOCAL_TOKEN not in policy.text, policy.text
    [local] = policy.json()["document"]["mcp"]["servers"]
    assert local["env"] == {"GREETING": "hello", "LOCAL_TOKEN": "${LOCAL_TOKEN}"} and "pin" not in local


async def test_the_working_directory_is_private_to_the_server(gw):
    async with agent(gw, gw.keys["agent"], "local") as a:
        cwd = text_of(await a.call_tool("local__write_note", {"text": "kept here"}))
    assert Path(cwd) == gw.tmp / ".sluice" / "mcp" / "local"
    assert stat.S_IMODE(os.stat(cwd).st_mode) == 0o700 and os.stat(cwd).st_uid == os.getuid()
    assert (Path(cwd) / "note.txt").read_text() == "kept here"


async def test_its_stderr_is_in_sluices_log_masked(gw):
    async with agent(gw, gw.keys["agent"], "local") as a:
        assert text_of(await a.call_tool("local__shout", {"text": f"token {GITHUB} and {LOCAL_TOKEN}"})) == "ok"
    deadline = time.monotonic() + 10
    while "shouting: token" not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(ln for ln in gw.log().splitlines() if "shouting: token" in ln)
    assert "mcp: server local:" in line and GITHUB not in line and LOCAL_TOKEN not in line, line


async def test_a_killed_server_is_started_again_without_waiting_for_a_call(gw):
    async with agent(gw, gw.keys["agent"], "local") as a:
        first = int(text_of(await a.call_tool("local__pid", {})))
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        started = [ln for ln in gw.log().splitlines() if "sluice-launch: pid" in ln]
        if str(first) not in started[-1]:
            break
        time.sleep(0.1)
    assert str(first) not in started[-1], started
    assert "server local exited; starting it again in" in gw.log()
    again = int(started[-1].split("sluice-launch: pid ")[1].split(",")[0])
    async with agent(gw, gw.keys["agent"], "local") as a:
        assert int(text_of(await a.call_tool("local__pid", {}))) == again != first


def test_a_command_off_the_allow_list_is_a_config_error_naming_it(sim, tmp_path):
    done = serve_once(tmp_path, sim, server={"command": ["/bin/sh", "-c", "true"]})
    assert done.returncode not in (0, -15)
    assert "MCP server 'local' runs '/bin/sh', which is not in allowed_commands" in done.stdout, done.stdout
    done = serve_once(tmp_path, sim, allowed_commands=["python3"])
    assert "allowed_commands must be absolute paths: 'python3'" in done.stdout, done.stdout
