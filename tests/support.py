"""Real processes for tests: the simulated backend and sluice itself, on free ports."""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from sluice.identity import generate

IN_CI = os.environ.get("CI") == "true"
PEPPER = "test-pepper-0123456789abcdef"
REDIS_URL = os.environ.get("SLUICE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require_redis() -> None:
    """Skip without Redis (fail in CI, where it is required)."""
    import pytest
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"Redis is required in CI and unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_block() -> range:
    """This process's own ports: below the kernel's ephemeral range (so no outgoing connection's local
    port and no other process's bind-to-0 lands on them) and, under pytest-xdist, one block per worker
    (so two workers never hand out the same port). A port freed by one test is not handed out again
    until the block has gone round."""
    low, high = 10000, max(_ephemeral_low(), 10000 + 1000)
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), index + 1)
    size = (high - low) // count
    return range(low + index * size, low + (index + 1) * size)


_BLOCK = _port_block()
# A random start, so that two test sessions on one machine (two helpers, two checkouts) walk apart
_START = random.randrange(len(_BLOCK))
_next_port = iter(_BLOCK[(_START + i) % len(_BLOCK)] for i in itertools.count())
_port_lock = threading.Lock()


def free_port() -> int:
    """A loopback port that nothing listens on or lingers on now, from this worker's own block."""
    with _port_lock:
        for port in _next_port:
            with socket.socket() as s:  # no SO_REUSEADDR: a port with a TIME_WAIT connection is skipped too
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise AssertionError("unreachable")


class PortTaken(RuntimeError):
    """A child process could not bind its port: another process took it between free_port() and the bind."""


_PORT_TAKEN = re.compile(r"Errno\s+98|address\s+already\s+in\s+use", re.IGNORECASE)


_started: list[Proc] = []


def stop_leftovers() -> list[str]:
    """Stop every child this process started that is still running (a fixture that failed half-way
    through its set-up never reaches its teardown); the command line of each."""
    left = [p for p in _started if p.popen.poll() is None]
    for p in left:
        p.stop()
    _started.clear()
    return [" ".join(map(str, p.popen.args)) for p in left]


class Proc:
    """A child process whose output goes to a log file we can read after."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        full_env = {**os.environ, **(env or {})}
        self.popen = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd)
        _started.append(self)

    def wait_http(self, url: str, timeout: float = 20.0, verify: Any = True) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                log = self.log()
                self.stop()
                raise (PortTaken if _PORT_TAKEN.search(log) else RuntimeError)(
                    f"process exited with {self.popen.returncode}:\n{log}")
            try:
                if httpx.get(url, timeout=1.0, verify=verify).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        log = self.log()
        self.stop()  # a process that never got ready must not outlive the test that started it
        raise TimeoutError(f"{url} not ready after {timeout}s:\n{log}")

    def log(self) -> str:
        if not self._log.closed:  # still readable after stop(), for the message of a failed assertion
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode


class Sim:
    """The simulated backend as its own process."""

    def __init__(self, tmp: Path, port: int | None = None, **flags: Any) -> None:
        for attempt in range(3):  # ``port``: where an earlier sim listened (a redeploy)
            self.port = port or free_port()
            args = [sys.executable, "-m", "sluice", "sim", "--port", str(self.port)]
            opts = {"decode-ms": 0, "prefill-ms": 0, "base-ms": 0, **flags}
            for k, v in opts.items():
                args += [f"--{k}", str(v)]
            self.proc = Proc(args, tmp / f"sim-{self.port}.log")
            self.url = f"http://127.0.0.1:{self.port}"
            try:
                self.proc.wait_http(self.url + "/health")
                return
            except PortTaken:
                if attempt == 2 or port is not None:
                    raise

    def faults(self, **spec: Any) -> None:
        httpx.post(self.url + "/sim/faults", json=spec).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(self.url + "/sim/faults").raise_for_status()

    def stats(self) -> dict:
        return httpx.get(self.url + "/sim/stats").json()

    def stop(self) -> None:
        self.proc.stop()


class Gateway:
    """A sluice process started from a config written for the test."""

    def __init__(self, tmp: Path, config: dict[str, Any], keys: dict[str, str], admin_key: str, env: dict[str, str] | None = None,
                 args: list[str] | None = None, port: int | None = None, wait_for: str = "/readyz", verify: Any = True) -> None:
        self.verify = verify  # httpx's: a context trusting the test's CA when a plane speaks TLS
        for attempt in range(3):  # a port taken under us is tried again on fresh ones, unless the test chose it
            try:
                self._start(tmp, config, keys, admin_key, env, args, port, wait_for)
                return
            except PortTaken:
                if attempt == 2 or port is not None or isinstance(config.get("data_plane"), list) \
                        or "port" in config.get("data_plane", {}):
                    raise

    def _start(self, tmp: Path, config: dict[str, Any], keys: dict[str, str], admin_key: str, env: dict[str, str] | None,
               args: list[str] | None, port: int | None, wait_for: str) -> None:
        self.tmp = tmp
        self.port, self.admin_port = port or free_port(), free_port()
        config = {
            "data_plane": {"port": self.port},
            "control_plane": {"port": self.admin_port},
            "store": {"url": f"sqlite:///{tmp}/sluice.db"},
            "security": {"pepper": PEPPER},
            "admin": {"keys": [admin_key]},
            "logging": {"level": "info"},
            **config,
        }
        # A test may give data_plane or control_plane settings (tls) without the port; a list of named
        # listeners gives its own ports, and ``url`` is the first one's.
        if isinstance(config["data_plane"], list):
            self.port = config["data_plane"][0]["port"]
        else:
            config["data_plane"] = {"port": self.port, **config["data_plane"]}
        config["control_plane"] = {"port": self.admin_port, **config["control_plane"]}
        self.config_path = tmp / f"gateway-{self.port}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.keys = keys
        self.admin_key = admin_key
        first = config["data_plane"][0] if isinstance(config["data_plane"], list) else config["data_plane"]
        self.url = f"{'https' if first.get('tls') else 'http'}://127.0.0.1:{self.port}"
        self.admin_url = f"{'https' if config['control_plane'].get('tls') else 'http'}://127.0.0.1:{self.admin_port}"
        self.proc = Proc([sys.executable, "-m", "sluice", "serve", "--config", str(self.config_path), *(args or [])],
                         tmp / f"gateway-{self.port}.log", env=env, cwd=tmp)
        # 60 s, not 20: on a shared 2-core machine under `make test-stress` a start took longer than 20 s
        # ``wait_for="/healthz"``: a gateway started where it cannot be ready (its limits backend is down)
        # TEST_READY_S: longer still, on a machine other sessions load far past its cores
        self.proc.wait_http(self.admin_url + wait_for, timeout=float(os.environ.get("TEST_READY_S", 60)), verify=self.verify)

    @property
    def v1(self) -> str:
        return self.url + "/v1"

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(method, self.admin_url + path, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=10,
                             verify=self.verify, **kw)

    def post(self, path: str, key: str | None = None, **kw: Any) -> httpx.Response:
        headers = kw.pop("headers", {})
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        return httpx.post(self.url + path, headers=headers, timeout=30, verify=self.verify, **kw)

    def stop(self, timeout: float = 15.0) -> int:
        return self.proc.stop(timeout=timeout)

    def log(self) -> str:
        return self.proc.log()


def start_gateway(tmp: Path, *, upstreams: list[dict], models: list[dict], identities: list[dict],
                  extra: dict | None = None, env: dict[str, str] | None = None, args: list[str] | None = None,
                  port: int | None = None, admin_key: str | None = None, wait_for: str = "/readyz",
                  verify: Any = True) -> Gateway:
    """Each identity gets one generated key in its environment unless it lists its own."""
    keys: dict[str, str] = {}
    idents = []
    for ident in identities:
        ident = dict(ident)
        if "keys" not in ident:
            keys[ident["name"]] = generate(ident.get("environment", "dev"))
            ident["keys"] = [keys[ident["name"]]]
        idents.append(ident)
    admin_key = admin_key or generate("prod", kind="admin")
    config = {"upstreams": upstreams, "models": models, "identities": idents, **(extra or {})}
    return Gateway(tmp, config, keys, admin_key, env, args, port, wait_for, verify)


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that keeps the test output clean (no access log on stderr), with the two
    ways a fake upstream answers: a whole body, or server-sent events one write at a time."""

    def log_message(self, *args: Any) -> None:
        pass

    def send_body(self, body: bytes, content_type: str = "application/json", status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_events(self, events: list[bytes], gap: float = 0.002) -> None:
        """Each event in a write of its own, ``gap`` seconds apart: the gateway meets each in its own read."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(sum(map(len, events))))
        self.end_headers()
        for e in events:
            self.wfile.write(e)
            self.wfile.flush()
            time.sleep(gap)


class LoopbackServer:
    """A threaded HTTP server on a free loopback port, for small test doubles (an issuer, a proxy)."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()


def fuzz_within_contract(operation: Any, base_url: str, headers: dict[str, str], *, mode: Any = None,
                         examples: int = 25, path_values: list[str | None] | None = None) -> None:
    """Fuzz one operation of an OpenAPI document (schemathesis, derandomized so a failure reproduces): no 5xx,
    the documented content type and schema, every error in the OpenAI envelope. ``path_values`` (None: keep
    the generated one) stand in for the generated path parameters, to reach things that exist."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings, strategies as st
    from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

    @given(case=operation.as_strategy(**({} if mode is None else {"generation_mode": mode})),
           pick=st.sampled_from(path_values) if path_values else st.none())
    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])
    def fuzz(case: schemathesis.Case, pick: str | None) -> None:
        if pick is not None and case.path_parameters:
            case.path_parameters = {name: pick for name in case.path_parameters}
        response = case.call(base_url=base_url, headers=headers, timeout=10)
        case.validate_response(response, checks=[not_a_server_error, content_type_conformance,
                                                 response_schema_conformance])
        if response.status_code >= 400:
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}

    fuzz()


def usage_rows(g: Gateway, since: float, n: int) -> list[dict]:
    """The usage records since ``since``, once ``n`` of them are written (the ledger writes in batches)."""
    deadline = time.monotonic() + 10
    while True:
        rows = g.admin("GET", f"/admin/usage?since={since}&limit=1000").json()["data"]
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)
