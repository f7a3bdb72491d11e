"""Bytecodes per request of two bench/opcodes.sh runs, per function (matched by file and name), largest growth first.

Usage: python bench/opcodes_diff.py A.json B.json [N (requests, default 2000)] [ROWS (default 40)]
"""

from __future__ import annotations

import json
import sys


def per_function(path: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key, (ops, calls) in json.load(open(path)).items():
        file, _line, name = key.split(":", 2)
        got = out.setdefault(f"{file}:{name}", [0, 0])
        got[0] += ops
        got[1] += calls
    return out


def main() -> None:
    a, b = per_function(sys.argv[1]), per_function(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
    shown = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    total = [sum(v[0] for v in d.values()) / n for d in (a, b)]
    print(f"bytecodes per request {total[0]:.0f} -> {total[1]:.0f}")
    rows = sorted(((b.get(k, [0, 0])[0] - a.get(k, [0, 0])[0]) / n, k) for k in {*a, *b})
    for d, k in rows[::-1][:shown] + [(None, "...")] + rows[:shown // 4]:
        if d is None:
            print("...")
            continue
        before, after = a.get(k, [0, 0]), b.get(k, [0, 0])
        print(f"{d:+8.1f}  {before[0] / n:7.1f} -> {after[0] / n:7.1f}  calls {before[1] / n:5.2f} -> {after[1] / n:5.2f}  {k}")


if __name__ == "__main__":
    main()
