"""`make bench-scale` (issue 29, item 5): what sluice costs as each input a deployment grows grows.

For every input, sizes spanning at least two orders of magnitude, and per size the cost that should stay
flat (per-request CPU against identities, routes and limit rules), stay linear (per-request CPU against the
prompt's size, memory against open streams) or is an operation's time (start-up, registry reload, policy
activation). Per-request CPU is the gateway process's own on-CPU time over N requests (the sum of
/proc/PID/task/*/schedstat, nanoseconds, every thread), divided by N: unlike throughput it does not move
much with what else the shared machine runs. The gateway is pinned to CPU 0, the client (this process)
and the canned upstream (nginx, ../shared/bench) to CPU 1; every port is a free one, so nothing collides
with other sessions. Each size is a fresh gateway on a fresh SQLite store; the cost is the median of
ROUNDS rounds of N requests, 16 in flight, after a warm-up.

    .venv/bin/python bench/scale.py [--rows identities,routes,rules,policy,prompt,streams,history] [--quick]
                                    [--history 1M,10M,100M]

``--quick`` runs the smaller sizes only (no 100,000 identities, no 10,000 streams). The usage history
(bench/usage_scale.py: Postgres on SLUICE_PG_URL's server, a throwaway database) runs at 1M rows unless
``--history`` names sizes: 10M loads in ~15 minutes on this machine, 100M in hours.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SHARED_BENCH", ROOT.parent / "shared" / "bench"))
if not SHARED.exists():
    SHARED = Path("/work/shared/bench")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "http"))
sys.path.insert(0, str(ROOT / "bench"))
from ttft import free_port  # noqa: E402  # the benches' free port

PEPPER = "bench-scale-pepper-not-for-production-01"
ROUNDS = 5
CONCURRENCY = 16
CALLERS = 256  # keys the client spreads its requests over, at every size (the digest cache sees the same)
PROMPT = "Say hello in one short sentence."


# ---------------------------------------------------------------- processes and what they cost

def cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of every thread of a process (schedstat's first field)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raise_fd_limit(want: int = 65536) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Upstream:
    """The canned upstream of ../shared/bench (nginx: one JSON completion, one SSE stream), on free ports."""

    def __init__(self) -> None:
        self.port, self.stream_port = free_port(), free_port()
        env = {**os.environ, "MOCK_PORT": str(self.port), "MOCK_STREAM_PORT": str(self.stream_port)}
        out = subprocess.run(["taskset", "-c", "1", str(SHARED / "start-mock-upstream")], env=env, check=True,
                             capture_output=True, text=True)
        self.dir = Path(out.stdout.strip().splitlines()[-1])

    def stop(self) -> None:
        try:
            os.kill(int((self.dir / "nginx.pid").read_text()), signal.SIGTERM)
        except (OSError, ValueError):
            pass


class Gateway:
    """One ``sluice serve`` on CPU 0 with a config of its own in a directory of its own."""

    def __init__(self, workdir: Path, cfg: dict, root: Path = ROOT) -> None:
        self.dir = workdir
        self.root = root  # the checkout it runs (another one: an A/B of a change)
        self.port, self.control = free_port(), free_port()
        self.cfg = {"data_plane": {"host": "127.0.0.1", "port": self.port},
                    "control_plane": {"host": "127.0.0.1", "port": self.control},
                    "store": {"url": f"sqlite:///{workdir}/store.db"}, "security": {"pepper": PEPPER},
                    "admin": {"keys": ["sla_" + "a" * 36]}, "logging": {"level": "warning"}, **cfg}
        self.proc: subprocess.Popen | None = None
        self.startup_s = 0.0
        self.calls: list[tuple[str, bytes]] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 600) -> None:
        (self.dir / "config.yaml").write_text(yaml.safe_dump(self.cfg))
        env = {**os.environ, "PYTHONPATH": str(self.root)}
        t0 = time.monotonic()
        self.proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "sluice", "serve", "--config",
                                      str(self.dir / "config.yaml")], env=env, cwd=self.dir,
                                     stdout=subprocess.DEVNULL, stderr=open(self.dir / "gateway.log", "wb"))
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{self.control}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() - t0 > timeout:
                raise SystemExit(f"sluice did not become ready; see {self.dir}/gateway.log")
            time.sleep(0.05)
        self.startup_s = time.monotonic() - t0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def drive(port: int, calls: list[tuple[str, bytes]], n: int, concurrency: int = CONCURRENCY) -> None:
    """N requests, ``concurrency`` in flight, cycling through ``calls`` (key, body); any non-2xx fails the run."""
    left = [n]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as client:
        async def worker(w: int) -> None:
            i = w
            while left[0] > 0:
                left[0] -= 1
                key, body = calls[i % len(calls)]
                i += concurrency
                r = await client.post("/v1/chat/completions", content=body, headers={
                    "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                if r.status_code >= 300:
                    raise SystemExit(f"request failed: {r.status_code} {r.text[:300]}")
        await asyncio.gather(*(worker(w) for w in range(concurrency)))


def cpu_per_request(sides: list[tuple[Gateway, list[tuple[str, bytes]]]], n: int, *, rounds: int = ROUNDS,
                    concurrency: int = CONCURRENCY) -> list[float]:
    """Each gateway's median CPU microseconds per request over ``rounds`` rounds of N (after a warm-up of N/2).
    The gateways run side by side and the rounds take turns, so a busy spell of the shared machine falls
    on every size alike."""
    for gw, calls in sides:
        asyncio.run(drive(gw.port, calls, max(n // 2, len(calls)), concurrency))
    out: list[list[float]] = [[] for _ in sides]
    for _ in range(rounds):
        for i, (gw, calls) in enumerate(sides):
            before = cpu_ns(gw.pid)
            asyncio.run(drive(gw.port, calls, n, concurrency))
            out[i].append((cpu_ns(gw.pid) - before) / n / 1000)
    return [statistics.median(o) for o in out]


def chat(model: str, content: str = PROMPT) -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 32}).encode()


def upstreams(up: Upstream, **extra: Any) -> list[dict]:
    return [{"name": "mock", "base_url": f"http://127.0.0.1:{up.port}/v1", **extra}]


# ---------------------------------------------------------------- seeding identities into the store

async def seed_identities(url: str, n: int, *, models: list[str] | None = None) -> list[tuple[str, str]]:
    """N identities of one data-plane key each, written straight into the store's tables in a few
    statements (the schema the gateway migrates; ``sluice identities create`` is one round trip each).
    Returns (identity id, key) of every identity."""
    from sqlalchemy import insert, update

    from sluice.identity import keys as keymod
    from sluice.store import schema as t
    from sluice.store.sql import SqlStore

    hasher = keymod.Hasher(PEPPER.encode())
    store = SqlStore(url, timeout=600)
    await store.open()
    now = time.time()
    out, idents, creds = [], [], []
    rng = random.Random(29)
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    for i in range(n):
        body = "slk_prod_" + "".join(rng.choice(alphabet) for _ in range(30))
        secret = body + keymod._checksum(body)
        iid = f"id-{i:012d}"
        idents.append({"id": iid, "name": f"svc-{i}", "owner": f"owner-{i % 97}@bench.dev", "environment": "prod",
                       "models": json.dumps(models or ["*"]), "created_at": now, "created_by": "bench",
                       "expires_at": None, "disabled_at": None, "source": "api", "team": None, "roles": '["invoker"]'})
        creds.append({"id": f"key-{i:012d}", "identity_id": iid, "hash": hasher.digest(secret),
                      "display": keymod.display(secret), "created_at": now, "created_by": "bench", "expires_at": None,
                      "revoked_at": None, "last_used_at": None, "source": "api", "plane": "data"})
        out.append((iid, secret))
    async with store.engine.begin() as conn:
        for lo in range(0, n, 20_000):
            await conn.execute(insert(t.identities), idents[lo:lo + 20_000])
            await conn.execute(insert(t.api_keys), creds[lo:lo + 20_000])
        await conn.execute(update(t.identity_state).where(t.identity_state.c.id == 1)
                           .values(version=t.identity_state.c.version + 1))
    await store.close()
    return out


async def reload_seconds(url: str, size: int, rounds: int = 3) -> tuple[float, float]:
    """What a replica's registry reload costs, whole (IdentityService.load with no history to follow: both
    lists read, the index rebuilt) and patched after one key was revoked elsewhere (the change read from
    ``identity_changes``, that key's identity and keys read, the index patched); medians of ``rounds``."""
    from sluice.core.config import Security
    from sluice.identity import CredentialRegistry, Hasher, IdentityService
    from sluice.store import Writes
    from sluice.store.sql import SqlStore

    store = SqlStore(url, timeout=600)
    await store.open(migrate=False)
    hasher = Hasher(PEPPER.encode())
    whole, patch = [], []
    for i in range(rounds):
        service = IdentityService(store, CredentialRegistry(hasher), hasher, Security())
        t0 = time.perf_counter()
        assert await service.load(await store.identity_version())
        whole.append(time.perf_counter() - t0)
        # another replica's change, to a key none of the callers uses (they are spread from the first)
        await store.apply(Writes().revoke_key(f"key-{size - 1 - i:012d}", time.time()))
        t0 = time.perf_counter()
        assert await service.load(await store.identity_version()) and service.patches == 1
        patch.append(time.perf_counter() - t0)
    await store.close()
    return statistics.median(whole), statistics.median(patch)


def callers(seeded: list[tuple[str, str]], k: int = CALLERS) -> list[tuple[str, str]]:
    """``k`` identities spread evenly over all of them (every size asks the same number of distinct keys)."""
    step = max(1, len(seeded) // k)
    return seeded[::step][:k]


def migrated_store(workdir: Path) -> str:
    workdir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{workdir}/store.db"


# ---------------------------------------------------------------- the rows

Row = dict[str, Any]


def side_by_side(setups: list[tuple[int, Path, dict, list[tuple[str, bytes]], dict]], n: int,
                 during: Any = None) -> list[Row]:
    """Start one gateway per size (one after another, each start-up timed alone), then measure them together;
    ``during(gateway, row)``: more to measure on each, one at a time, afterwards."""
    gws: list[Gateway] = []
    try:
        for _, work, cfg, calls, _ in setups:
            gws.append(Gateway(work, cfg))
            gws[-1].calls = calls
            gws[-1].start()
        cpu = cpu_per_request([(gw, calls) for gw, (_, _, _, calls, _) in zip(gws, setups)], n)
        rows = [{"size": size, "cpu_us": c, "rss_mib": rss_mib(gw.pid), "startup_s": gw.startup_s, **extra}
                for (size, _, _, _, extra), gw, c in zip(setups, gws, cpu)]
        for gw, row in zip(gws, rows):
            if during is not None:
                during(gw, row)
        return rows
    finally:
        for gw in gws:
            gw.stop()
        for _, work, _, _, _ in setups:
            shutil.rmtree(work, ignore_errors=True)


def identities_rows(up: Upstream, sizes: list[int], n: int, tmp: Path) -> list[Row]:
    """N identities of one key each; the client asks with 256 of the keys, spread over all of them."""
    setups = []
    for size in sizes:
        work = tmp / f"ident-{size}"
        url = migrated_store(work)
        seeded = asyncio.run(seed_identities(url, size))
        calls = [(key, chat("mock-model")) for _, key in callers(seeded)]
        cfg = {"upstreams": upstreams(up), "models": [{"name": "mock-model", "upstream": "mock"}]}
        whole, patch = asyncio.run(reload_seconds(url, size, 3 if size < 50_000 else 1))
        setups.append((size, work, cfg, calls, {"reload_s": whole, "patch_s": patch}))
    return side_by_side(setups, n, during=reload_stall)


def reload_stall(gw: Gateway, row: Row) -> None:
    """What a reload does to requests: another replica's change while a request goes every 20 ms; the slowest
    of them, and whether /readyz said not ready meanwhile (a reload past ``identity.max_staleness_s``). Twice:
    a key revoked elsewhere, as the store records it (the version moved, the key named in ``identity_changes``:
    the registry is patched), and the version moved with no record of what changed (as when a replica is
    behind the history kept: reloaded whole)."""
    row["stall_ms"], row["unready"] = stall(gw, row, "patch")
    row["stall_whole_ms"], row["unready_whole"] = stall(gw, row, "whole")


def stall(gw: Gateway, row: Row, how: str) -> tuple[float, bool]:
    import sqlite3

    key = gw.calls[0][0]
    changed = f"key-{row['size'] - 5:012d}"  # a key none of the callers uses (they are spread from the first)

    async def run() -> tuple[float, bool]:
        lat, unready = [], False
        async with httpx.AsyncClient(timeout=600) as client:
            async def bump() -> None:
                await asyncio.sleep(0.5)
                db = sqlite3.connect(gw.dir / "store.db", timeout=60)
                db.execute("UPDATE identity_state SET version = version + 1 WHERE id = 1")
                if how == "patch":
                    db.execute(f"UPDATE api_keys SET revoked_at = {time.time()} WHERE id = '{changed}'")
                    db.execute("INSERT INTO identity_changes SELECT version, 'key', ?, ? FROM identity_state",
                               (changed, time.time()))
                db.commit()
                db.close()
            bumper = asyncio.ensure_future(bump())
            end = time.monotonic() + max(3.0, 1.5 * row["reload_s" if how == "whole" else "patch_s"] + 1.0)
            while time.monotonic() < end:
                t0 = time.perf_counter()
                r = await client.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", content=chat("mock-model"),
                                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                lat.append((time.perf_counter() - t0) * 1000)
                if r.status_code != 200:
                    raise SystemExit(f"request during a reload failed: {r.status_code} {r.text[:200]}")
                ready = await client.get(f"http://127.0.0.1:{gw.control}/readyz")
                unready = unready or ready.status_code != 200
                await asyncio.sleep(0.02)
            await bumper
        return max(lat), unready

    return asyncio.run(run())


def routes_rows(up: Upstream, sizes: list[int], n: int, tmp: Path, shape: str) -> list[Row]:
    """``aliases``: N routes, one alias each (the ``models:`` list of a deployment with N models); the
    callers ask 64 of them. ``shared``: N routes of one alias told apart by the caller's identity name,
    the callers' route the last (the worst case of first-match routing)."""
    setups = []
    for size in sizes:
        work = tmp / f"routes-{shape}-{size}"
        seeded = asyncio.run(seed_identities(migrated_store(work), CALLERS))
        if shape == "aliases":
            cfg = {"upstreams": upstreams(up), "models": [{"name": f"m-{i}", "upstream": "mock",
                                                           "upstream_model": "mock-model"} for i in range(size)]}
            asked = [f"m-{i}" for i in range(0, size, max(1, size // 64))][:64]
            calls = [(key, chat(asked[j % len(asked)])) for j, (_, key) in enumerate(seeded)]
        else:
            routes = [{"name": f"r-{i}", "match": {"models": ["shared"], "identities": [f"other-{i}"]},
                       "targets": [{"target": "shared@v1", "weight": 1}]} for i in range(size - 1)]
            routes.append({"name": "callers", "match": {"models": ["shared"]},
                           "targets": [{"target": "shared@v1", "weight": 1}]})
            cfg = {"upstreams": upstreams(up), "registry": [{"name": "shared", "versions": [
                {"version": "v1", "upstream": "mock", "upstream_model": "mock-model", "approved": True}]}],
                   "routes": routes}
            calls = [(key, chat("shared")) for _, key in seeded]
        setups.append((size, work, cfg, calls, {}))
    return side_by_side(setups, n)


def rules_rows(up: Upstream, sizes: list[int], n: int, tmp: Path) -> list[Row]:
    """N limit rules, each matching one identity (``match: {identity: ...}``, per identity, every cap far
    above the load), plus one per model over everything: a request takes its own rule's counters and that one's."""
    setups = []
    for size in sizes:
        work = tmp / f"rules-{size}"
        seeded = asyncio.run(seed_identities(migrated_store(work), max(size, CALLERS)))
        rules = [{"name": f"r-{i}", "per": ["identity"], "match": {"identity": seeded[i][0]},
                  "requests_per_minute": 10**9, "input_tokens_per_minute": 10**12, "concurrent_requests": 10**6}
                 for i in range(size - 1)]
        rules.append({"name": "all", "per": ["model"], "requests_per_minute": 10**9})
        cfg = {"upstreams": upstreams(up), "models": [{"name": "mock-model", "upstream": "mock"}],
               "limits": {"backend": "memory", "rules": rules}}
        # callers whose rule exists at every size (the first ones), and as many at every size
        calls = [(key, chat("mock-model")) for _, key in seeded[:min(size - 1, 8)]]
        setups.append((size, work, cfg, calls, {}))
    return side_by_side(setups, n)


def policy_document(size: int) -> Any:
    """A policy of ``size`` registry models and routes (two weighted versions each) and ``size`` limit rules."""
    from sluice.core import config
    from sluice.policy import LimitsSection, PolicyDocument
    from sluice.routing import from_config

    cfg = config.parse({
        "upstreams": [{"name": "a", "base_url": "http://127.0.0.1:9/v1"}],
        "registry": [{"name": f"m-{i}", "versions": [{"version": v, "upstream": "a", "approved": True}
                                                     for v in ("v1", "v2")]} for i in range(size)],
        "routes": [{"name": f"r-{i}", "match": {"models": [f"alias-{i}"]},
                    "targets": [{"target": f"m-{i}@v1", "weight": 90}, {"target": f"m-{i}@v2", "weight": 10}]}
                   for i in range(size)],
        "limits": {"rules": [{"name": f"l-{i}", "per": ["identity"], "match": {"model": f"m-{i}"},
                              "requests_per_minute": 1000} for i in range(size)]},
    })
    return cfg, PolicyDocument(routing=from_config(cfg), limits=LimitsSection(rules=list(cfg.limits.rules)))


def policy_rows(sizes: list[int]) -> list[Row]:
    """Activation of a policy version (compile_policy: the route table, the limit rule set, the guard's view),
    its time (median of 3) and the memory the compiled version holds (tracemalloc)."""
    from sluice.core.config import Breaker
    from sluice.limits import Limiter, build_backend
    from sluice.policy.active import compile_policy
    from sluice.policy.document import canonical
    from sluice.routing import RoutingState
    from sluice.routing.policy import Environments

    rows = []
    for size in sizes:
        cfg, doc = policy_document(size)
        data = canonical(doc)
        routing = RoutingState(doc.routing, transports={}, breaker=Breaker())
        limiter = Limiter(cfg.limits, build_backend("memory", "", 1.0))
        envs = Environments(doc.routing)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            compile_policy(1, "0" * 64, doc, data, routing, limiter, envs)
            times.append(time.perf_counter() - t0)
        gc.collect()
        tracemalloc.start()
        kept = compile_policy(1, "0" * 64, doc, data, routing, limiter, envs)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        rows.append({"size": size, "activate_ms": statistics.median(times) * 1000, "held_mib": held / 2**20,
                     "doc_kib": len(data) / 1024})
    return rows


WORDS = ("the gateway routes each request to a model version and records what it cost in tokens "
         "while limits hold every team to its budget and guardrails look for secrets in what is sent ").split()


def prompt_text(size: int) -> str:
    rng = random.Random(size)
    out, length = [], 0
    while length < size:
        w = rng.choice(WORDS)
        out.append(w)
        length += len(w) + 1
    return " ".join(out)[:size]


def prompt_rows(up: Upstream, sizes_kib: list[int], n_1kib: int, tmp: Path) -> list[Row]:
    """One gateway with detectors on input and output (masking), a limit rule (so the prompt is estimated)
    and prefix-affinity placement over two replicas (so its prefix is hashed); the same caller sends bodies
    of 1 KiB to 1 MiB. CPU per request, and per KiB of prompt."""
    work = tmp / "prompt"
    url = migrated_store(work)
    seeded = asyncio.run(seed_identities(url, 1))
    base = f"http://127.0.0.1:{up.port}/v1"
    cfg = {"upstreams": [{"name": "mock", "base_url": base, "replicas": [base.replace("127.0.0.1", "localhost")],
                          "placement": {"policy": "prefix_affinity"}}],
           "models": [{"name": "mock-model", "upstream": "mock"}],
           "limits": {"backend": "memory", "rules": [{"name": "per-identity", "per": ["identity"],
                                                      "input_tokens_per_minute": 10**12}]},
           "guardrails": {"rule_sets": [{"name": "default-detectors", "detectors": {"input": "mask", "output": "mask"}}]}}
    gw = Gateway(work, cfg)
    rows = []
    try:
        gw.start()
        key = seeded[0][1]
        for kib in sizes_kib:
            body = chat("mock-model", prompt_text(kib * 1024 - 120))
            n = max(10, n_1kib // kib)
            cpu = cpu_per_request([(gw, [(key, body)])], n, concurrency=4 if kib >= 100 else CONCURRENCY)[0]
            rows.append({"size": kib, "cpu_us": cpu, "us_per_kib": cpu / kib, "body_kib": len(body) / 1024})
    finally:
        gw.stop()
    shutil.rmtree(work, ignore_errors=True)
    return rows


async def hold_streams(port: int, key: str, count: int, opened: asyncio.Event, done: asyncio.Event) -> None:
    """Open ``count`` streamed chat requests on raw sockets (a few hundred connecting at a time, as clients
    arrive), read their heads, then keep reading until ``done``."""
    body = json.dumps({"model": "paced", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           + f"authorization: Bearer {key}\r\n".encode() + b"content-length: %d\r\n\r\n" % len(body) + body)
    live = [0]
    connecting = asyncio.Semaphore(200)

    async def one() -> None:
        async with connecting:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(req)
            head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"stream refused: {head[:200]!r}")
        live[0] += 1
        if live[0] == count:
            opened.set()
        while not done.is_set():
            try:
                if not await asyncio.wait_for(reader.read(65536), 1.0):
                    raise SystemExit("a stream ended early")
            except asyncio.TimeoutError:
                pass
        writer.close()

    await asyncio.gather(*(one() for _ in range(count)))


def streams_rows(up: Upstream, sizes: list[int], tmp: Path) -> list[Row]:
    """S slow streams held open through one gateway (a paced upstream, tests/http/paced.py: a token every
    5 s), then: the gateway's RSS per open stream, its CPU per second holding them, and the latency of a
    small non-streamed request beside them (median and p99 of 100, one at a time: the event loop's lag)."""
    rows = []
    for size in sizes:
        work = tmp / f"streams-{size}"
        url = migrated_store(work)
        seeded = asyncio.run(seed_identities(url, 1))
        paced = free_port()
        upstream = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-c",
                                     "import asyncio, sys; sys.path.insert(0, sys.argv[1]); from paced import serve_paced;"
                                     " asyncio.run(serve_paced(int(sys.argv[2]), 0, 5000, tokens=10000))",
                                     str(ROOT / "tests" / "http"), str(paced)])
        cfg = {"upstreams": upstreams(up) + [{"name": "paced", "base_url": f"http://127.0.0.1:{paced}/v1",
                                               "max_connections": 20000}],
               "models": [{"name": "mock-model", "upstream": "mock"}, {"name": "paced", "upstream": "paced"}]}
        gw = Gateway(work, cfg)
        try:
            gw.start()
            key = seeded[0][1]
            asyncio.run(drive(gw.port, [(key, chat("mock-model"))], 200))
            rows.append({"size": size, **asyncio.run(_streams_measure(gw, key, size))})
        finally:
            gw.stop()
            upstream.terminate()
            upstream.wait()
        shutil.rmtree(work, ignore_errors=True)
    return rows


async def _probe(port: int, key: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        for _ in range(n):
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", content=chat("mock-model"),
                                  headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
            out.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"probe failed: {r.status_code} {r.text[:200]}")
            await asyncio.sleep(0.02)
    return sorted(out)


async def _streams_measure(gw: Gateway, key: str, size: int) -> Row:
    gc.collect()
    idle_rss = rss_mib(gw.pid)
    base = await _probe(gw.port, key, 50)
    opened, done = asyncio.Event(), asyncio.Event()
    holder = asyncio.ensure_future(hold_streams(gw.port, key, size, opened, done))
    t0 = time.monotonic()
    await asyncio.wait_for(opened.wait(), 600)
    open_s = time.monotonic() - t0
    await asyncio.sleep(2)
    held_rss = rss_mib(gw.pid)
    c0, w0 = cpu_ns(gw.pid), time.monotonic()
    lat = await _probe(gw.port, key, 100)
    cpu_share = (cpu_ns(gw.pid) - c0) / 1e9 / (time.monotonic() - w0)
    done.set()
    await holder
    return {"open_s": open_s, "kib_per_stream": (held_rss - idle_rss) * 1024 / size, "rss_mib": held_rss,
            "cpu_share": cpu_share, "p50_ms": statistics.median(lat), "p99_ms": lat[int(len(lat) * 0.99) - 1],
            "idle_p50_ms": statistics.median(base)}


def history_rows(sizes: list[str], tmp: Path) -> list[Row]:
    """Usage history on Postgres (bench/usage_scale.py, one run per size: load, readers, writes): the slowest
    summary ``by=``, chargeback, the dashboard page, and the ledger's rows/s alone and while a day's partition
    is exported and dropped."""
    rows = []
    for size in sizes:
        out = tmp / f"history-{size}.json"
        subprocess.run([sys.executable, str(ROOT / "bench" / "usage_scale.py"), "--rows", size, "--json", str(out),
                        "--db", f"sluice_scale_hist_{os.getpid()}"], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        got = json.loads(out.read_text())
        med = {(kind, q): m for kind, q, _, m, _ in got["readers"]}
        summary = {q: m for (kind, q), m in med.items() if kind == "summary"}
        worst = max(summary, key=summary.get)
        rows.append({"size": got["rows"], "summary_ms": summary[worst], "summary_worst": worst,
                     "chargeback_ms": max(m for (kind, _), m in med.items() if kind == "chargeback"),
                     "dashboard_ms": med[("dashboard", "page")], "alone": got["writes"]["alone"]["rows_s"],
                     "during": got["writes"]["during"]["rows_s"], "pause_ms": got["writes"]["during"]["longest_ms"],
                     "loadavg": got["loadavg"][-1]})
    return rows


# ---------------------------------------------------------------- the table

def growth(rows: list[Row], field: str) -> str:
    """The cost at the largest size as a multiple of the smallest's."""
    a, b = rows[0][field], rows[-1][field]
    return f"x{b / a:.2f}" if a else "-"


def print_table(results: dict[str, list[Row]]) -> None:
    print()
    print(f"{'input':<34} {'size':>8}  measure")
    print("-" * 100)

    def line(name: str, size: Any, text: str) -> None:
        print(f"{name:<34} {size:>8}  {text}")

    for name, rows in results.items():
        for r in rows:
            s = f"{r['size']:,}"
            if name == "identities and keys":
                line(name, s, f"{r['cpu_us']:7.1f} us CPU/req  RSS {r['rss_mib']:7.1f} MiB  start-up {r['startup_s']:6.2f} s"
                              f"  registry patched {r['patch_s'] * 1000:7.1f} ms (slowest request during one"
                              f" {r['stall_ms']:7.1f} ms{', /readyz not ready' if r['unready'] else ''})"
                              f"  reloaded whole {r['reload_s'] * 1000:8.1f} ms (slowest request {r['stall_whole_ms']:7.1f} ms"
                              f"{', /readyz not ready' if r['unready_whole'] else ''})")
            elif name.startswith(("routes", "limit rules")):
                line(name, s, f"{r['cpu_us']:7.1f} us CPU/req  RSS {r['rss_mib']:7.1f} MiB  start-up {r['startup_s']:6.2f} s")
            elif name.startswith("policy"):
                line(name, s, f"activation {r['activate_ms']:9.1f} ms  held {r['held_mib']:7.2f} MiB"
                              f"  document {r['doc_kib']:8.0f} KiB")
            elif name.startswith("prompt"):
                line(name, f"{r['size']:,} KiB", f"{r['cpu_us']:9.1f} us CPU/req  {r['us_per_kib']:6.2f} us/KiB")
            elif name.startswith("open streams"):
                line(name, s, f"{r['kib_per_stream']:6.1f} KiB/stream  RSS {r['rss_mib']:7.1f} MiB  CPU {r['cpu_share'] * 100:5.1f}%"
                              f"  probe p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:7.2f} ms (idle p50 {r['idle_p50_ms']:.2f})"
                              f"  opened in {r['open_s']:.1f} s")
            elif name.startswith("usage history"):
                line(name, s, f"summary {r['summary_ms']:6.1f} ms ({r['summary_worst']}, the slowest summary)"
                              f"  chargeback {r['chargeback_ms']:6.1f} ms  dashboard {r['dashboard_ms']:6.1f} ms"
                              f"  ledger {r['alone']:8,.0f} rows/s, {r['during']:8,.0f} while a day is exported and"
                              f" dropped (longest batch {r['pause_ms']:.0f} ms)  load {r['loadavg']}")
        if name == "identities and keys" and len(rows) > 1:
            per = (rows[-1]["rss_mib"] - rows[0]["rss_mib"]) * 1024 / (rows[-1]["size"] - rows[0]["size"])
            line("", "", f"RSS per identity (and its key): {per:.2f} KiB")
        if len(rows) > 1:
            key = {"identities and keys": "cpu_us", "policy document (routes + rules)": "activate_ms",
                   "prompt size": "us_per_kib", "open streams": "kib_per_stream",
                   "usage history (Postgres rows)": "summary_ms"}.get(name, "cpu_us")
            line("", "", f"largest against smallest: {growth(rows, key)} ({key})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="identities,routes,rules,policy,prompt,streams,history")
    ap.add_argument("--history", default=None, help="usage-history sizes, e.g. 1M,10M,100M (default 1M; hours at 100M)")
    ap.add_argument("--quick", action="store_true", help="the smaller sizes only")
    ap.add_argument("-n", type=int, default=2000, help="requests per round")
    args = ap.parse_args()
    raise_fd_limit()
    os.sched_setaffinity(0, {1})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # stopped: the gateways and nginx stop too
    want = set(args.rows.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="sluice-scale-"))
    up = Upstream()
    results: dict[str, list[Row]] = {}
    try:
        def run(name: str, fn: Any) -> None:
            t0 = time.monotonic()
            try:
                results[name] = fn()
            except (Exception, SystemExit) as exc:  # one row failing leaves the others' numbers
                print(f"# {name}: failed: {exc}", file=sys.stderr, flush=True)
                return
            print(f"# {name}: {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
            print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)

        if "identities" in want:
            run("identities and keys", lambda: identities_rows(
                up, [1000, 10_000] if args.quick else [1000, 10_000, 100_000], args.n, tmp))
        if "routes" in want:
            run("routes (an alias each)", lambda: routes_rows(up, [10, 100, 1000], args.n, tmp, "aliases"))
            run("routes (one alias, last match)", lambda: routes_rows(up, [10, 100, 1000], args.n, tmp, "shared"))
        if "rules" in want:
            run("limit rules", lambda: rules_rows(up, [10, 100, 1000], args.n, tmp))
        if "policy" in want:
            run("policy document (routes + rules)", lambda: policy_rows([10, 100, 1000] if args.quick else [10, 100, 1000, 10_000]))
        if "prompt" in want:
            run("prompt size", lambda: prompt_rows(up, [1, 10, 100, 1024], args.n, tmp))
        if "streams" in want:
            run("open streams", lambda: streams_rows(up, [90, 900] if args.quick else [90, 900, 9000], tmp))
        if "history" in want:  # a few minutes at 1M; 10M takes ~15 min and 100M hours to load here
            run("usage history (Postgres rows)", lambda: history_rows((args.history or "1M").split(","), tmp))
    finally:
        up.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print_table(results)


if __name__ == "__main__":
    main()
