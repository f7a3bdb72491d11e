"""``make bench-routing``: placement policies in front of 4 simulated replicas.

Workloads, in the manner of inference-perf's ``shared_prefix``:
  shared:    32 groups x 32 prompts; a 2,048-token system prompt per group, a 256-token question
             per prompt, 256 output tokens (ignore_eos), shuffled, Poisson arrivals.
  no-prefix: as many prompts of the same length that share nothing.

Each replica is a ``sluice sim`` process with one prefill at a time (``--prefill-concurrency 1``,
the resource that saturates), decode slowed by the batch (``--batch-slowdown``), and a prefix
cache sized so that the 32 system prompts need ``PREFIX_OVER_CACHE`` (2.75) times one replica's cache.
Time is scaled down (microseconds per prompt token, not the tens of a real GPU) so a run takes a
couple of minutes on a 2-core machine; ratios between policies are what it measures.

The bench drives the placement classes of ``sluice.routing.placement`` directly (it is the
router's decision in isolation; sluice itself does not sit in the path). The arrival rate is 70% of
round robin's saturation rate: replicas / (prefill cost x the mean uncached prompt tokens round robin
leaves), where that mean comes from replaying the same arrival order through the sim's own cache
class offline. ``--precise`` adds a run of the precise variant (the index also fed by the replicas'
vLLM-shaped KV block events, the sim's tokenizer on the routing path). Prints every acceptance
figure and whether it is met; exits 1 if one is not.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx

from sluice.routing.placement import (LeastOutstanding, PlacementSettings, PrefixAffinity, Replica, RoundRobin,
                                      conversation_text)
from sluice.sim import tokens as sim_tokens
from sluice.sim.prefix_cache import PrefixCache, stable_block_hash

REPLICAS = 4
GROUPS, PER_GROUP = 32, 32
SYSTEM_TOKENS, QUESTION_TOKENS, OUTPUT_TOKENS = 2048, 256, 256
BLOCK_TOKENS = 16
PREFIX_OVER_CACHE = 2.75
LOAD = 0.70
MODEL = "sim-small"

# The scaled latency model (ms); see the module docstring.
PREFILL_MS, DECODE_MS, BASE_MS, BATCH_SLOWDOWN = 0.03, 2.0, 1.0, 0.02

_VOCAB = [a + b + c for a in "bcdfghjklmnprstvwz" for b in "aeiou" for c in "bdglmnprstx"]


def words(rng: random.Random, n: int) -> str:
    """``n`` sim tokens of about 4 characters each, as real BPE text runs."""
    return " ".join(rng.choices(_VOCAB, k=n))


def shared_prefix_workload(seed: int) -> list[list[dict[str, str]]]:
    """32 x 32 conversations: the group's system prompt, then a question of its own; shuffled."""
    rng = random.Random(seed)
    systems = [words(rng, SYSTEM_TOKENS - 1) for _ in range(GROUPS)]  # the role is a token too
    prompts = [[{"role": "system", "content": systems[g]}, {"role": "user", "content": words(rng, QUESTION_TOKENS - 1)}]
               for g in range(GROUPS) for _ in range(PER_GROUP)]
    rng.shuffle(prompts)
    return prompts


def unique_workload(seed: int, n: int) -> list[list[dict[str, str]]]:
    """Prompts of the same size that share no prefix (each starts with its own words)."""
    rng = random.Random(seed)
    return [[{"role": "system", "content": words(rng, SYSTEM_TOKENS - 1)}, {"role": "user", "content": words(rng, QUESTION_TOKENS - 1)}]
            for _ in range(n)]


@dataclass
class Result:
    """One policy's run of one workload."""

    policy: str
    ttft: list[float] = field(default_factory=list)
    errors: int = 0
    hit_rate: float = 0.0
    in_flight_samples: list[list[int]] = field(default_factory=list)
    # Picks that went to a replica with more in flight than the least loaded one at that moment.
    off_least: int = 0
    seconds: float = 0.0

    def pct(self, q: float) -> float:
        s = sorted(self.ttft)
        return s[min(len(s) - 1, int(q * len(s)))]

    @property
    def balance(self) -> tuple[float, float]:
        """Max over min of the replicas' mean in-flight counts, and the 95th percentile of the
        instantaneous gap (most loaded minus least loaded), over the samples taken while busy."""
        busy = [s for s in self.in_flight_samples if max(s) > 0]
        if not busy:
            return 1.0, 0.0
        means = [statistics.fmean(s[i] for s in busy) for i in range(len(busy[0]))]
        gaps = sorted(max(s) - min(s) for s in busy)
        return (max(means) / min(means) if min(means) else float("inf")), float(gaps[int(0.95 * (len(gaps) - 1))])


def start_sims(cache_blocks: int, kv_events: bool = False) -> list[tuple[subprocess.Popen[bytes], str]]:
    """``REPLICAS`` sim processes on free ports, ready."""
    import socket

    sims = []
    for _ in range(REPLICAS):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = [sys.executable, "-m", "sluice", "sim", "--port", str(port), "--prefill-ms", str(PREFILL_MS),
                "--decode-ms", str(DECODE_MS), "--base-ms", str(BASE_MS), "--cache-blocks", str(cache_blocks),
                "--block-tokens", str(BLOCK_TOKENS), "--prefill-concurrency", "1", "--batch-slowdown", str(BATCH_SLOWDOWN),
                "--model", MODEL] + (["--kv-events"] if kv_events else [])
        sims.append((subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), f"http://127.0.0.1:{port}"))
    for proc, url in sims:
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError(f"sim at {url} exited with {proc.returncode}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
    return sims


def reset(urls: list[str]) -> None:
    """Empty every replica's prefix cache and zero its counters."""
    for url in urls:
        httpx.post(url + "/reset_prefix_cache").raise_for_status()
        httpx.post(url + "/sim/stats/reset").raise_for_status()


def hit_rate(urls: list[str]) -> float:
    """Cached prompt tokens over prompt tokens, over all replicas (vLLM's prefix cache hit rate)."""
    hits = queried = 0
    for url in urls:
        s = httpx.get(url + "/sim/stats").json()
        hits += s["prefix_cache_hit_tokens"]
        queried += s["prefix_cache_query_tokens"]
    return hits / queried if queried else 0.0


def prompt_tokens(messages: list[dict[str, str]]) -> list[str]:
    return sim_tokens.message_tokens((m["role"], m["content"]) for m in messages)


def round_robin_saturation(prompts: list[list[dict[str, str]]], cache_blocks: int) -> tuple[float, float]:
    """Round robin's saturation rate (req/s) and its offline cache hit rate, from the sim's cache class."""
    caches = [PrefixCache(cache_blocks, BLOCK_TOKENS) for _ in range(REPLICAS)]
    uncached = total = 0
    for i, p in enumerate(prompts):
        toks = prompt_tokens(p)
        cached = caches[i % REPLICAS].lookup_and_insert(toks)
        uncached += len(toks) - cached
        total += len(toks)
    service_s = PREFILL_MS / 1000 * uncached / len(prompts)
    return REPLICAS / service_s, 1 - uncached / total


def sim_block_keys(prompt: Any) -> list[int]:
    """The sim's own block hashes for a conversation: its tokenizer, 16-token blocks, its chained hash
    (what llm-d's precise scorer computes with the model's tokenizer and vLLM's hash)."""
    toks = prompt_tokens(prompt)
    out: list[int] = []
    parent = 0
    for i in range((len(toks) - 1) // BLOCK_TOKENS):  # as the sim: the last token is never a hit
        parent = stable_block_hash(parent, toks[i * BLOCK_TOKENS : (i + 1) * BLOCK_TOKENS])
        out.append(parent)
    return out


async def follow_kv_events(policy: PrefixAffinity, replicas: list[Replica], stop: asyncio.Event) -> None:
    """Feed each replica's KV block events (``GET /sim/kv_events``) into the precise index."""
    async with httpx.AsyncClient(timeout=5) as client:
        seqs = [(await client.get(r.url + "/sim/kv_events", params={"after": 1 << 60})).json()["next_seq"] - 1
                for r in replicas]
        while not stop.is_set():
            for i, r in enumerate(replicas):
                body = (await client.get(r.url + "/sim/kv_events", params={"after": seqs[i]})).json()
                for item in body["batches"]:
                    seqs[i] = item["seq"]
                    for event in item["batch"][1]:  # [ts, events]; each event is [tag, fields...]
                        if event[0] == "BlockStored":
                            policy.stored(r, event[1])
                        elif event[0] == "BlockRemoved":
                            policy.removed(r, event[1])
                        else:
                            policy.forget(r)
            await asyncio.sleep(0.02)


async def run(policy_name: str, policy: LeastOutstanding, prompts: list[list[dict[str, str]]], rate: float,
              urls: list[str], seed: int, precise: bool = False) -> Result:
    """Send every prompt at Poisson arrivals of ``rate``, placed by ``policy``; TTFT per request.
    ``precise``: the policy takes the decoded messages and the replicas' KV events."""
    reset(urls)
    replicas = [Replica(f"r{i}", url) for i, url in enumerate(urls)]
    result = Result(policy_name)
    rng = random.Random(seed)
    # The router sees a decoded request; the approximate index works on its string.
    texts: Sequence[Any] = prompts if precise else [conversation_text(p) for p in prompts]
    stop_events = asyncio.Event()
    follower = (asyncio.create_task(follow_kv_events(policy, replicas, stop_events))
                if precise and isinstance(policy, PrefixAffinity) else None)
    bodies = [{"model": MODEL, "messages": p, "max_tokens": OUTPUT_TOKENS, "ignore_eos": True, "stream": True} for p in prompts]
    sampling = True

    async def sample() -> None:
        while sampling:
            result.in_flight_samples.append([r.in_flight for r in replicas])
            await asyncio.sleep(0.05)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        start = time.perf_counter()
        least = min(r.in_flight for r in replicas)
        replica = policy.pick(replicas, texts[i])
        result.off_least += replica.in_flight - 1 > least
        try:
            async with session.post(replica.url + "/v1/chat/completions", json=bodies[i]) as resp:
                if resp.status != 200:
                    result.errors += 1
                    return
                events = 0
                first = 0.0
                async for chunk in resp.content.iter_any():
                    if not first:
                        events += chunk.count(b"\n\n")
                        if events >= 2:  # the role chunk comes after prefill, the first token one step later
                            first = time.perf_counter() - start
                result.ttft.append(first)
        except aiohttp.ClientError:
            result.errors += 1
        finally:
            policy.done(replica)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        sampler = asyncio.create_task(sample())
        tasks = []
        t0 = time.perf_counter()
        due = t0
        for i in range(len(prompts)):
            due += rng.expovariate(rate)
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(session, i)))
        await asyncio.gather(*tasks)
        result.seconds = time.perf_counter() - t0
        sampling = False
        await sampler
        if follower is not None:
            stop_events.set()
            await follower
    result.hit_rate = hit_rate(urls)
    return result


def decision_cost_ms(precise: bool = False) -> float:
    """Median cost of one prefix-affinity decision on an 8,000-character, 32-group-warmed index;
    ``precise``: with the sim's tokenizer and block hash on the routing path."""
    rng = random.Random(7)
    placement = PrefixAffinity(PlacementSettings(policy="prefix_affinity"), seed=MODEL,
                               block_keys=sim_block_keys if precise else None)
    replicas = [Replica(f"r{i}") for i in range(REPLICAS)]
    convs = [[{"role": "system", "content": words(rng, 1600)}, {"role": "user", "content": words(rng, 400)}]
             for _ in range(GROUPS)]
    texts: list[Any] = convs if precise else [conversation_text(c)[:8000] for c in convs]
    for t in texts:
        placement.done(placement.pick(replicas, t))
    samples = []
    for i in range(5000):
        start = time.perf_counter()
        r = placement.pick(replicas, texts[i % GROUPS])
        samples.append(time.perf_counter() - start)
        placement.done(r)
    return statistics.median(samples) * 1000


def line(r: Result) -> str:
    ratio, gap = r.balance
    return (f"  {r.policy:<18} n={len(r.ttft):>4} err={r.errors} {r.seconds:5.1f}s  TTFT p50 {r.pct(0.5) * 1000:7.1f} ms"
            f"  p99 {r.pct(0.99) * 1000:7.1f} ms  hit rate {r.hit_rate:6.1%}  in-flight max/min {ratio:4.2f} gap(p95) {gap:3.0f}"
            f"  not least loaded {r.off_least / max(len(r.ttft), 1):5.1%}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--unique", type=int, default=1024, help="prompts in the no-shared-prefix workload")
    parser.add_argument("--precise", action="store_true",
                        help="also run prefix affinity fed by the replicas' KV block events (llm-d's precise scorer)")
    args = parser.parse_args()

    prefix_blocks = GROUPS * SYSTEM_TOKENS // BLOCK_TOKENS
    cache_blocks = int(prefix_blocks / PREFIX_OVER_CACHE)
    shared = shared_prefix_workload(args.seed)
    unique = unique_workload(args.seed + 1, args.unique)
    saturation, rr_offline_hits = round_robin_saturation(shared, cache_blocks)
    rate = LOAD * saturation
    unique_rate = LOAD * REPLICAS / (PREFILL_MS / 1000 * len(prompt_tokens(unique[0])))
    # The router's index remembers about what a replica caches: 16 tokens of ~4 characters per 64-character block.
    settings = PlacementSettings(policy="prefix_affinity", index_blocks=cache_blocks)
    print(f"replicas {REPLICAS}, cache {cache_blocks} blocks x {BLOCK_TOKENS} tokens each; system prompts need "
          f"{prefix_blocks / cache_blocks:.2f}x one cache")
    print(f"latency model (scaled): prefill {PREFILL_MS} ms/token one at a time, decode {DECODE_MS} ms/token "
          f"x (1 + {BATCH_SLOWDOWN} x others decoding), base {BASE_MS} ms")
    print(f"round robin saturates at {saturation:.1f} req/s (offline hit rate {rr_offline_hits:.1%}); "
          f"shared workload at {rate:.1f} req/s, no-prefix workload at {unique_rate:.1f} req/s (70%)")

    # KV events cost the sims (stable hashes, event JSON, polling), so only the --precise run has them.
    sims = start_sims(cache_blocks, args.precise) + start_sims(cache_blocks)
    urls = [u for _, u in sims[:REPLICAS]]
    urls2 = [u for _, u in sims[REPLICAS:]]
    try:
        print(f"shared prefix: {GROUPS} groups x {PER_GROUP} prompts, {SYSTEM_TOKENS}+{QUESTION_TOKENS} tokens in, "
              f"{OUTPUT_TOKENS} out")
        rr = await run("round_robin", RoundRobin(), shared, rate, urls, args.seed)
        print(line(rr), flush=True)
        lo = await run("least_outstanding", LeastOutstanding(), shared, rate, urls, args.seed)
        print(line(lo), flush=True)
        pa = await run("prefix_affinity", PrefixAffinity(settings, MODEL), shared, rate, urls, args.seed)
        print(line(pa), flush=True)
        pp = None
        if args.precise:
            precise = PrefixAffinity(settings, MODEL, block_keys=sim_block_keys)
            pp = await run("precise (KV events)", precise, shared, rate, urls, args.seed, precise=True)
            print(line(pp), flush=True)
        # The two policies run at the same time, each on its own 4 replicas with the same arrivals, so
        # whatever else loads this shared machine loads both: a p99 moves more than 5% between runs.
        print(f"no shared prefix: {len(unique)} prompts, both policies side by side on replica sets of their own")
        ulo, upa = await asyncio.gather(
            run("least_outstanding", LeastOutstanding(), unique, unique_rate, urls, args.seed),
            run("prefix_affinity", PrefixAffinity(settings, MODEL), unique, unique_rate, urls2, args.seed),
        )
        print(line(ulo), flush=True)
        print(line(upa), flush=True)
    finally:
        for proc, _ in sims:
            proc.terminate()
        for proc, _ in sims:
            proc.wait(10)

    cost = decision_cost_ms()
    if pp is not None:
        print(f"precise placement (tokenizing on the routing path): median TTFT {pp.pct(0.5) * 1000:.1f} ms, "
              f"hit rate {pp.hit_rate:.1%}, decision {decision_cost_ms(precise=True):.3f} ms on the same prompts")
    ulo_p99, upa_p99 = ulo.pct(0.99), upa.pct(0.99)
    ratio, gap = pa.balance
    checks = [
        (f"median TTFT vs round robin: -{1 - pa.pct(0.5) / rr.pct(0.5):.0%} (target >= 50% lower)", pa.pct(0.5) <= 0.5 * rr.pct(0.5)),
        (f"cache hit rate vs round robin: {pa.hit_rate / max(rr.hit_rate, 1e-9):.1f}x (target >= 3x)", pa.hit_rate >= 3 * rr.hit_rate),
        (f"in-flight balance: max/min {ratio:.2f}, p95 gap {gap:.0f} (target max/min <= 1.5 or gap <= 8)", ratio <= 1.5 or gap <= 8),
        (f"no-prefix p99 TTFT vs least outstanding: {upa_p99 / ulo_p99 - 1:+.1%} (target within 5%; "
         f"{upa.off_least} of {len(upa.ttft)} prefix-affinity picks were not on a least-loaded replica)",
         upa_p99 <= 1.05 * ulo_p99),
        (f"placement decision, 8,000 characters: {cost:.3f} ms median (target <= 0.1 ms)", cost <= 0.1),
    ]
    errors = sum(r.errors for r in [rr, lo, pa, ulo, upa, *([pp] if pp else [])])
    if errors:
        checks.append((f"{errors} requests failed", False))
    for text, ok in checks:
        print(f"{'met' if ok else 'MISSED':>6}  {text}")
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    sys.exit(asyncio.run(main()))
