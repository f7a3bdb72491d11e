"""One brute-force search of the semantic index, repeated K times over N unit vectors of 384 dimensions, for
callgrind: instructions per query = (count at K = 10 - count at K = 0) / 10 (bench/README.md, "Semantic cache").

    OPENBLAS_NUM_THREADS=1 valgrind --tool=callgrind python bench/semantic_brute_cg.py N K
"""

import sys

import numpy as np

n, k = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(7)
base = rng.standard_normal((n, 384)).astype(np.float32)
q = base[0].copy()


def search() -> int:
    s = base @ q
    return int(s.argmax())


search()
for _ in range(k):
    search()
