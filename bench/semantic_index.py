"""The semantic cache's vector index, chosen by measurement (issue 27, item 2): query time of brute force
(numpy: one matrix-vector product, then the argmax), usearch (HNSW) and faiss (flat inner product, and HNSW)
at 1k, 10k and 100k unit vectors of 384 dimensions; and what adding one vector costs each (the brute force's: a row of a matrix that doubles when full, so one add
in n copies it all; the median hides that, the mean is O(1) per add).

    python bench/semantic_index.py            # numpy alone
    python bench/semantic_index.py --all      # with usearch and faiss-cpu installed beside it
    python bench/semantic_index.py --all 100000   # only the sizes named

Medians of single queries (one request asks one vector), microseconds, on this machine.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np

DIM = 384
QUERIES = 200


def unit(n: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def timed(fn, queries: np.ndarray) -> float:
    out = []
    for q in queries:
        t0 = time.perf_counter_ns()
        fn(q)
        out.append(time.perf_counter_ns() - t0)
    return statistics.median(out) / 1000.0


def brute(base: np.ndarray):
    def search(q: np.ndarray) -> tuple[int, float]:
        s = base @ q
        i = int(s.argmax())
        return i, float(s[i])
    return search


class Grown:
    """The index's bucket as sluice.cache.vectors keeps it: rows of a matrix that doubles when full."""

    def __init__(self, base: np.ndarray) -> None:
        self.mat = base.copy()
        self.n = len(base)

    def add(self, vec: np.ndarray) -> None:
        if self.n == len(self.mat):
            self.mat = np.concatenate([self.mat, np.empty_like(self.mat)])
        self.mat[self.n] = vec
        self.n += 1


def main() -> None:
    every = "--all" in sys.argv
    rng = np.random.default_rng(7)
    queries = unit(QUERIES, rng)
    print(f"{'n':>7} {'index':<16} {'query us (median)':>18} {'add one us':>11} {'recall@1':>9}")
    sizes = [int(a) for a in sys.argv[1:] if a.isdigit()] or [1_000, 10_000, 100_000]
    for n in sizes:
        base = unit(n, rng)
        # a query near one stored vector (a paraphrase), so recall@1 says whether the index finds it
        near = base[rng.integers(0, n, QUERIES)] + 0.05 * queries
        near /= np.linalg.norm(near, axis=1, keepdims=True)
        truth = [int((base @ q).argmax()) for q in near]
        grown = Grown(base)
        rows = [("numpy brute", brute(base), lambda: grown.add(base[0]))]
        if every:
            import faiss
            from usearch.index import Index

            flat = faiss.IndexFlatIP(DIM)
            flat.add(base)
            rows.append(("faiss flat", lambda q: flat.search(q[None, :], 1), lambda: flat.add(base[:1])))
            hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.add(base)
            rows.append(("faiss hnsw", lambda q: hnsw.search(q[None, :], 1), lambda: hnsw.add(base[:1])))
            us = Index(ndim=DIM, metric="cos", dtype="f32")
            us.add(np.arange(n), base)
            nxt = [n]

            def us_add() -> None:
                us.add(nxt[0], base[0])
                nxt[0] += 1
            rows.append(("usearch hnsw", lambda q: us.search(q, 1), us_add))
        for name, fn, add in rows:
            q_us = timed(fn, queries)
            t0 = time.perf_counter_ns()
            for _ in range(20):
                add()
            add_us = (time.perf_counter_ns() - t0) / 20 / 1000.0
            got = []
            for q in near:
                r = fn(q)
                if name == "numpy brute":
                    got.append(r[0])
                elif name.startswith("faiss"):
                    got.append(int(r[1][0][0]))
                else:
                    got.append(int(r.keys[0]))
            rec = sum(a == b for a, b in zip(got, truth)) / len(truth)
            print(f"{n:>7} {name:<16} {q_us:>18.1f} {add_us:>11.1f} {rec:>9.2f}", flush=True)


if __name__ == "__main__":
    main()
