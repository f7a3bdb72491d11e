"""sluice's own CPU per MCP ``tools/call`` (issue 25's cost line), with the tool server's time excluded.

Starts a fastmcp server over Streamable HTTP (``tests/mcp/upstream_server.py``, its trivial ``get_weather``),
the simulated model backend (``sluice sim``, for the chat reference point) and one sluice process on the
embedded default (SQLite, memory limiter) with one identity and that server, first with ``pin: off`` then
with ``pin: required`` and the tool pinned. A light driver (raw httpx posting JSON-RPC with the session id:
not the SDK, so the driver stays cheap) sends N sequential ``tools/call`` per round, then N at concurrency 8;
per round it reads sluice's utime+stime from ``/proc/<pid>/stat`` and prints the median over rounds of
sluice's CPU µs per call. The same for N sequential chat completions, as the machine's reference point.

    PYTHONPATH=. .venv/bin/python bench/mcp_calls.py [--calls 1000] [--rounds 5] [--profile]

``--wrk`` drives both with the yardstick's wrk instead (``bench/mcp-call.lua``, c=16, 5 s rounds taking turns with
``chat.lua`` on the same gateway), pinned to CPU 1: CPU per call under the load ``make ab`` measures chat at.

``--profile`` also samples sluice with py-spy during one extra sequential round (pin: off) and prints the
top frames (``bench/spy-top.py``). Each process is pinned to its own CPU where there are two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")
PEPPER = "bench-pepper-not-for-production-0001"
TOOL = "files__get_weather"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def pinned(cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def pin_of(url: str) -> str:
    """The hash sluice pins ``get_weather`` by, from the server's own listing (the SDK, once, at set-up)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from sluice.mcp.pins import definition_hash
    async with Client(streamable_http_client(url), cache=None) as c:
        tools = (await c.list_tools()).tools
    return definition_hash(next(t for t in tools if t.name == "get_weather"))


class Sluice:
    """One sluice process from a config written here."""

    def __init__(self, tmp: Path, server_url: str, sim_url: str, pin: str, pins: dict[str, str]) -> None:
        from sluice.identity import generate
        self.key = generate("prod")
        self.port, admin = free_port(), free_port()
        config = {
            "data_plane": {"host": "127.0.0.1", "port": self.port},
            "control_plane": {"host": "127.0.0.1", "port": admin},
            "store": {"url": f"sqlite:///{tmp}/sluice-{pin}.db"},
            "security": {"pepper": PEPPER},
            "admin": {"keys": [generate("prod", kind="admin")]},
            "logging": {"level": "warning"},
            "upstreams": [{"name": "sim", "base_url": sim_url + "/v1"}],
            "models": [{"name": "sim-small", "upstream": "sim"}],
            "identities": [{"name": "agent", "owner": "bench@sluice.dev", "environment": "prod", "models": ["*"],
                            "keys": [self.key]}],
            "mcp": {"servers": [{"name": "files", "url": server_url, "pin": pin}], "pins": pins},
            "tools": [{"name": TOOL, "risk": "read", "identities": ["agent"],
                       "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}],
        }
        path = tmp / f"sluice-{pin}.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(tmp / f"sluice-{pin}.log", "w")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen([*pinned(0), sys.executable, "-m", "sluice", "serve", "--config", str(path)],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        self.url = f"http://127.0.0.1:{self.port}"
        wait_http(f"http://127.0.0.1:{admin}/readyz", self.proc)

    def stop(self) -> None:
        stop(self.proc)
        self.log.close()


async def mcp_session(client: httpx.AsyncClient, url: str, key: str) -> dict[str, str]:
    auth = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    r = await client.post(url, headers=auth, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "0"}}})
    r.raise_for_status()
    headers = {**auth, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18",
               "Content-Type": "application/json"}
    await client.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return headers


async def mcp_round(client: httpx.AsyncClient, url: str, headers: dict[str, str], calls: int, conc: int) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": TOOL, "arguments": {"city": "Paris"}}}).encode()

    async def worker(n: int) -> None:
        for _ in range(n):
            r = await client.post(url, headers=headers, content=body)
            if r.status_code != 200 or "error" in r.json() or r.json()["result"].get("isError"):
                raise RuntimeError(f"tools/call failed: {r.status_code} {r.text[:300]}")

    await asyncio.gather(*(worker(calls // conc) for _ in range(conc)))


async def chat_round(client: httpx.AsyncClient, url: str, key: str, calls: int) -> None:
    body = json.dumps({"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}).encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    for _ in range(calls):
        r = await client.post(url + "/v1/chat/completions", headers=headers, content=body)
        if r.status_code != 200:
            raise RuntimeError(f"chat failed: {r.status_code} {r.text[:300]}")


def wrk_round(pid: int, url: str, lua: Path, conc: int, seconds: int, env: dict[str, str]) -> tuple[float, float, int]:
    """One wrk run (pinned to CPU 1, as the yardstick's ``load``): (sluice's CPU µs per request, req/s, failed)."""
    before = cpu_s(pid)
    out = subprocess.run([*pinned(1), "wrk", "-t1", f"-c{conc}", f"-d{seconds}s", "-s", str(lua), url],
                         capture_output=True, text=True, env={**os.environ, **env}, check=True).stdout
    used = cpu_s(pid) - before
    done = int(next(line.split()[0] for line in out.splitlines() if "requests in" in line))
    if not done:
        raise RuntimeError(f"wrk completed no request against {url}:\n{out}")
    bad = sum(int(line.split()[-1]) for line in out.splitlines() if line.startswith(("failed", "  Non-2xx")))
    return used * 1e6 / done, done / seconds, bad


async def wrk_rows(gw: Sluice, headers: dict[str, str], rounds: int, conc: int, seconds: int, chat: bool) -> None:
    """tools/call and (``chat``) a chat completion on the same gateway, driven by wrk at ``conc`` in turns."""
    sides = [("tools/call", gw.url + "/mcp/files", ROOT / "bench/mcp-call.lua",
              {"BENCH_KEY": gw.key, "MCP_SESSION": headers["Mcp-Session-Id"], "MCP_TOOL": TOOL})]
    if chat:
        sides.append(("chat completion (sim)", gw.url + "/v1/chat/completions", ROOT.parent / "shared/bench/chat.lua",
                      {"BENCH_KEY": gw.key, "BENCH_MODEL": "sim-small"}))
    got: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in sides}
    for name, url, lua, env in sides:  # warm-up
        wrk_round(gw.proc.pid, url, lua, conc, 2, env)
    for _ in range(rounds):
        for name, url, lua, env in sides:
            us, rps, bad = wrk_round(gw.proc.pid, url, lua, conc, seconds, env)
            if bad:
                raise RuntimeError(f"{name}: {bad} answers were not a success")
            got[name].append((us, rps))
    for name, rows in got.items():
        cpu = [u for u, _ in rows]
        print(f"{name + f', wrk c={conc}':<34} median {statistics.median(cpu):7.0f} µs/call   "
              f"{statistics.median(r for _, r in rows):7.0f} req/s   rounds: {' '.join(f'{x:.0f}' for x in cpu)}", flush=True)


async def measure(pid: int, rounds: int, calls: int, run) -> list[float]:
    """sluice's CPU µs per call, one figure per round (a warm-up round first, not counted)."""
    await run(min(calls, 200))
    out = []
    for _ in range(rounds):
        before = cpu_s(pid)
        await run(calls)
        out.append((cpu_s(pid) - before) * 1e6 / calls)
    return out


def show(label: str, per_round: list[float]) -> float:
    med = statistics.median(per_round)
    print(f"{label:<34} median {med:7.0f} µs/call   rounds: {' '.join(f'{x:.0f}' for x in per_round)}", flush=True)
    return med


async def bench(gw: Sluice, calls: int, rounds: int, profile: Path | None, label: str, wrk: bool = False
                ) -> dict[str, float]:
    url = gw.url + "/mcp/files"
    pid = gw.proc.pid
    out = {}
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        headers = await mcp_session(client, url, gw.key)
        if wrk:
            await wrk_rows(gw, headers, rounds, 16, 5, chat=label == "pin: off")
            return out
        out["seq"] = show(f"tools/call {label}, sequential", await measure(
            pid, rounds, calls, lambda n: mcp_round(client, url, headers, n, 1)))
        out["c8"] = show(f"tools/call {label}, c=8", await measure(
            pid, rounds, calls, lambda n: mcp_round(client, url, headers, n, 8)))
        if profile is not None:
            beside = Path(sys.executable).parent / "py-spy"  # the venv's, else one on PATH
            spy = subprocess.Popen([str(beside) if beside.exists() else "py-spy", "record", "--pid", str(pid), "--rate", "500", "--gil", "--format", "raw",
                                    "--output", str(profile), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            await mcp_round(client, url, headers, calls * 2, 1)
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--no-chat", action="store_true")
    ap.add_argument("--wrk", action="store_true", help="drive with wrk at c=16 (5 s rounds), as the chat yardstick")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-mcp-"))
    port = free_port()
    procs: list[subprocess.Popen] = []
    gateways: list[Sluice] = []
    try:
        tool_log = open(tmp / "upstream.log", "w")
        tool = subprocess.Popen([*pinned(1), sys.executable, str(ROOT / "tests/mcp/upstream_server.py"), str(port),
                                 str(tmp / "auth.log")], stdout=tool_log, stderr=subprocess.STDOUT)
        procs.append(tool)
        server_url = f"http://127.0.0.1:{port}/mcp"
        wait_http(server_url, tool)
        sim_port = free_port()
        sim = subprocess.Popen([*pinned(1), sys.executable, "-m", "sluice", "sim", "--port", str(sim_port),
                                "--decode-ms", "0", "--prefill-ms", "0", "--base-ms", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs.append(sim)
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_http(sim_url + "/health", sim)
        pin = await pin_of(server_url)
        print(f"{args.rounds} rounds of {args.calls} calls; sluice's CPU from /proc/<pid>/stat (tool server excluded)")
        for mode in ("off", "required"):
            gw = Sluice(tmp, server_url, sim_url, mode, {TOOL: pin} if mode == "required" else {})
            gateways.append(gw)
            prof = tmp / "profile.txt" if args.profile and mode == "off" else None
            await bench(gw, args.calls, args.rounds, prof, f"pin: {mode}", args.wrk)
            if mode == "off" and not args.no_chat and not args.wrk:
                async with httpx.AsyncClient(timeout=30) as client:
                    show("chat completion (sim), sequential", await measure(
                        gw.proc.pid, args.rounds, args.calls, lambda n: chat_round(client, gw.url, gw.key, n)))
            gw.stop()
            gateways.remove(gw)
            if prof is not None and prof.exists():
                print("== py-spy, pin: off, sequential tools/call ==")
                subprocess.run([sys.executable, str(ROOT / "bench/spy-top.py"), str(prof)])
    finally:
        for gw in gateways:
            gw.stop()
        for p in procs:
            stop(p)


if __name__ == "__main__":
    asyncio.run(main())
