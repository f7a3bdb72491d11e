"""Embeddings micro-batching (issue 27, item 4): upstream calls per request and latency, with and without.

One sluice (CPU 0) in front of one sim (CPU 1, its default latency model: 1 ms a call plus 0.05 ms a prompt
token), two upstreams to that sim: ``batched`` (``embeddings_batching: {}``, the default 2 ms window) and
``plain``. wrk (CPU 1) drives ``POST /v1/embeddings`` (a different text per request, base64 as the SDK asks)
at c = 64 and at c = 1, the two sides alternating in rounds; the sim's own counter gives the upstream calls.
Prints each round and the medians: calls per request, p50 and p99, and what batching added to the p50.

    unshare -n sh -c 'ip link set lo up && .venv/bin/python bench/embed_batch.py [--rounds 3] [--seconds 5]'
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

from sluice.identity import generate

ROOT = Path(__file__).resolve().parent.parent
LUA = ROOT / "bench" / "embeddings.lua"
SIM, DATA, CONTROL = 18190, 18180, 18181


def wait(url: str) -> None:
    for _ in range(600):
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer")


def ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(c: int, seconds: int, model: str, key: str) -> dict:
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{c}", f"-d{seconds}s", "--latency", "-s", str(LUA),
                          f"http://127.0.0.1:{DATA}/v1/embeddings"], capture_output=True, text=True, check=True,
                         env={**os.environ, "BENCH_KEY": key, "BENCH_MODEL": model}).stdout
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
            "p50": ms(re.search(r"50%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "p99": ms(re.search(r"99%\s+(\S+)", out).group(1)),  # type: ignore[union-attr]
            "errors": int(bad.group(1)) if bad else 0}


def calls() -> int:
    return httpx.get(f"http://127.0.0.1:{SIM}/sim/stats").json()["embedding_requests"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--window-ms", type=float, default=2.0)
    # 0: the sim charges a batch the sum of its prompt tokens but runs separate calls' prefills in parallel
    # for free, which no GPU does; a fixed cost a call (--base-ms) leaves the gateway's own latency to compare
    p.add_argument("--prefill-ms", type=float, default=0.0)
    p.add_argument("--base-ms", type=float, default=1.0)
    # 1: the sim's prefills one at a time (one GPU's compute), so a batch and separate calls pay the same per token
    p.add_argument("--prefill-concurrency", type=int, default=0)
    args = p.parse_args()
    key, admin = generate("prod"), generate("prod", kind="admin")
    with tempfile.TemporaryDirectory() as tmp:
        config = {
            "data_plane": {"host": "127.0.0.1", "port": DATA}, "control_plane": {"host": "127.0.0.1", "port": CONTROL},
            "store": {"url": f"sqlite:///{tmp}/bench.db"}, "security": {"pepper": "bench-pepper-not-for-production-0001"},
            "admin": {"keys": [admin]}, "logging": {"level": "warning"},
            "upstreams": [{"name": "batched", "base_url": f"http://127.0.0.1:{SIM}/v1",
                           "embeddings_batching": {"batch_window_ms": args.window_ms}},
                          {"name": "plain", "base_url": f"http://127.0.0.1:{SIM}/v1"}],
            "models": [{"name": "e-batch", "upstream": "batched", "upstream_model": "sim-embed"},
                       {"name": "e-plain", "upstream": "plain", "upstream_model": "sim-embed"}],
            "identities": [{"name": "bench", "owner": "bench@sluice.dev", "environment": "prod",
                            "models": ["e-batch", "e-plain"], "keys": [key]}]}
        (Path(tmp) / "gateway.yaml").write_text(yaml.safe_dump(config))
        sim = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "sluice", "sim", "--port", str(SIM),
                                "--prefill-ms", str(args.prefill_ms), "--base-ms", str(args.base_ms),
                                "--prefill-concurrency", str(args.prefill_concurrency)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gw = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "sluice", "serve", "--config",
                               str(Path(tmp) / "gateway.yaml")], cwd=tmp, stderr=open(Path(tmp) / "gw.log", "w"))
        try:
            wait(f"http://127.0.0.1:{SIM}/health")
            wait(f"http://127.0.0.1:{CONTROL}/readyz")
            wrk(8, 2, "e-batch", key)  # warm both paths
            wrk(8, 2, "e-plain", key)
            rows: dict[tuple[int, str], list[dict]] = {}
            for r in range(args.rounds):
                for c in (64, 1):
                    for side, model in (("plain", "e-plain"), ("batched", "e-batch")):
                        before = calls()
                        got = wrk(c, args.seconds, model, key)
                        got["calls"] = calls() - before
                        rows.setdefault((c, side), []).append(got)
                        print(f"round {r + 1} c={c:<2} {side:<7} {got['requests'] / args.seconds:8.0f} req/s  "
                              f"{got['calls'] / got['requests']:.3f} calls/req  p50 {got['p50']:.2f} ms  "
                              f"p99 {got['p99']:.2f} ms  errors {got['errors']}", flush=True)
        finally:
            gw.terminate()
            sim.terminate()
            gw.wait()
            sim.wait()
    print(f"\nmedians of {args.rounds} rounds, {args.seconds} s each, window {args.window_ms} ms, sim "
          f"{args.base_ms} ms a call + {args.prefill_ms} ms a token (prefills at once: "
          f"{args.prefill_concurrency or 'any'}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for c in (64, 1):
        med = {side: {k: statistics.median(x[k] / (x["requests"] if k == "calls" else 1) for x in rows[(c, side)])
                      for k in ("calls", "p50", "p99", "requests")} for side in ("plain", "batched")}
        pl, ba = med["plain"], med["batched"]
        print(f"c={c}: upstream calls/request {pl['calls']:.3f} plain, {ba['calls']:.3f} batched: "
              f"{pl['calls'] / ba['calls']:.1f}x fewer; p50 {pl['p50']:.2f} -> {ba['p50']:.2f} ms "
              f"(added {ba['p50'] - pl['p50']:+.2f}); p99 {pl['p99']:.2f} -> {ba['p99']:.2f} ms; "
              f"req/s {pl['requests'] / args.seconds:.0f} -> {ba['requests'] / args.seconds:.0f}")


if __name__ == "__main__":
    main()
