"""Per-upstream bulkheads (issue 28.4): model B's p99 with model A's upstream stalled and 500 requests in A's line.

The scenario is the test's (tests/routing/bulkhead_load.py): B measured alone for ``--rounds`` rounds of
``--per-round`` requests (4 in flight), then A's sim hangs and 600 requests go to A (16 in flight, 500
in the line, 84 over), and B is measured again while the line stays full. Prints each round's p99, the
medians and their ratio (the issue's bound: 1.20), B's failures, and how A's overflow was answered.

    .venv/bin/python bench/bench_bulkhead.py [--rounds 7] [--per-round 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

tests = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(tests), str(tests / "routing")]
from bulkhead_load import start, stall_and_measure  # noqa: E402  (the test's scenario)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--per-round", type=int, default=200)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        g, a, b = start(Path(tmp))
        try:
            out = asyncio.run(stall_and_measure(g, a, rounds=args.rounds, per_round=args.per_round))
        finally:
            g.stop()
            a.stop()
            b.stop()
    base, under = statistics.median(out.unloaded), statistics.median(out.loaded)
    print("B p99 per round, A idle (ms):   ", " ".join(f"{x:.1f}" for x in out.unloaded))
    print("B p99 per round, A stalled (ms):", " ".join(f"{x:.1f}" for x in out.loaded))
    print(f"median p99: {base:.1f} ms idle, {under:.1f} ms stalled: ratio {under / base:.3f} (bound 1.20)")
    print(f"B failures: {len(out.b_failed)}; A in flight {out.in_flight:.0f}; A overflow answered: "
          f"{len(out.overflow)}, statuses {sorted({s for _, s, _, _ in out.overflow})}, "
          f"slowest {max((t for t, _, _, _ in out.overflow), default=0):.2f} s")
    print(f"Messages overflow: {out.messages[0]} retry-after {out.messages[1]}; "
          f"Responses overflow: {out.responses[0]} Retry-After {out.responses[1]}")


if __name__ == "__main__":
    main()
