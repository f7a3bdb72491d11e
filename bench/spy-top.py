"""Summarise a py-spy ``--format raw`` file (collapsed stacks): top frames by own and by total samples."""

from __future__ import annotations

import collections
import sys


def main(path: str, top: int = 18) -> None:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    for title, counter in (("own", own), ("total", total)):
        print(f"-- by {title} time ({samples} samples)")
        for frame, n in counter.most_common(top):
            print(f"{100 * n / samples:5.1f}%  {frame[:150]}")


if __name__ == "__main__":
    main(sys.argv[1])
