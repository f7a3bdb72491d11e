"""The semantic cache's vector index (issue 27, item 2): in this process, brute force over small buckets.

Entries are only ever compared within one bucket: the digest of everything but the last user message (the
scope, the policy's cache section, the model version, the parameters, the system prompt and the earlier
turns), so another identity's entry, another model's or another conversation's is never a candidate. A
bucket holds the unit vectors of its entries' last user messages in one float32 matrix, and a search is one
matrix-vector product and its largest value: at the sizes a bucket reaches this is faster than an HNSW index
(usearch, faiss), exact (no recall lost), and needs nothing but numpy (bench/README.md, "Semantic cache").

``MemoryVectors`` is the index of the memory backend: vectors are added when their entry is stored, and
forgotten when a candidate's entry is gone (evicted, expired or purged). ``RedisVectors`` is a rebuildable
cache of shared state, like the policy watcher: each vector is also appended to one Redis stream beside the
entries (``<prefix>vec``, trimmed to ``max_vectors``), and before each search the index reads what was
appended since it last looked (one non-blocking ``XREAD``, usually empty: one round trip), so an entry another
replica stored is a candidate here at the next lookup; a new replica reads the whole stream at its first.
A Redis that fails leaves the index as it was (searches go on over what it holds) until ``retry_s`` passes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

import numpy as np
from redis.exceptions import RedisError

from .outage import Outage


class _Bucket:
    """The vectors of one bucket: rows of a matrix grown by doubling, their keys and expiry times."""

    __slots__ = ("keys", "rows", "mat", "expires", "n")

    def __init__(self, dim: int) -> None:
        self.keys: list[str] = []
        self.rows: dict[str, int] = {}
        self.mat = np.empty((4, dim), dtype=np.float32)
        self.expires = np.empty(4, dtype=np.float64)
        self.n = 0

    def put(self, key: str, vec: np.ndarray, expires: float) -> None:
        row = self.rows.get(key)
        if row is None:
            row = self.n
            if row == len(self.mat):
                self.mat = np.concatenate([self.mat, np.empty_like(self.mat)])
                self.expires = np.concatenate([self.expires, np.empty_like(self.expires)])
            self.n += 1
            self.keys.append(key)
            self.rows[key] = row
        self.mat[row] = vec
        self.expires[row] = expires

    def drop(self, keep: np.ndarray) -> None:
        """Keep only the rows ``keep`` (a boolean mask over the first ``n``)."""
        self.mat = np.ascontiguousarray(self.mat[:self.n][keep]) if keep.any() else np.empty((4, self.mat.shape[1]), np.float32)
        self.expires = self.expires[:self.n][keep].copy() if keep.any() else np.empty(4, np.float64)
        self.keys = [k for k, kept in zip(self.keys, keep.tolist()) if kept]
        self.rows = {k: i for i, k in enumerate(self.keys)}
        self.n = len(self.keys)


class MemoryVectors:
    """The index in this process alone, at most ``max_vectors`` vectors (the least recently added bucket out first)."""

    def __init__(self, max_vectors: int) -> None:
        self._max = max_vectors
        self._count = 0
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return self._count

    def _put(self, bucket: str, key: str, vec: np.ndarray, expires: float) -> None:
        b = self._buckets.get(bucket)
        if b is None or b.mat.shape[1] != len(vec):  # a new bucket, or the embeddings model's size changed
            if b is not None:
                self._count -= b.n
            b = self._buckets[bucket] = _Bucket(len(vec))
        self._buckets.move_to_end(bucket)
        before = b.n
        b.put(key, vec, expires)
        self._count += b.n - before
        while self._count > self._max and len(self._buckets) > 1:
            _, old = self._buckets.popitem(last=False)
            self._count -= old.n

    async def add(self, bucket: str, key: str, vec: np.ndarray, ttl_s: float) -> None:
        self._put(bucket, key, vec, time.time() + ttl_s)

    def forget(self, bucket: str, key: str) -> None:
        b = self._buckets.get(bucket)
        if b is not None and key in b.rows:
            keep = np.ones(b.n, dtype=bool)
            keep[b.rows[key]] = False
            self._count -= 1
            b.drop(keep)

    async def search(self, bucket: str, vec: np.ndarray, threshold: float) -> str | None:
        """The key of the most similar live entry of ``bucket``, if its cosine is at least ``threshold``."""
        b = self._buckets.get(bucket)
        if b is None or b.n == 0 or b.mat.shape[1] != len(vec):
            return None
        live = b.expires[:b.n] > time.time()
        if not live.all():  # expired entries leave the bucket when it is next searched
            self._count -= int(b.n - live.sum())
            b.drop(live)
            if b.n == 0:
                del self._buckets[bucket]
                return None
        sims = b.mat[:b.n] @ vec
        i = int(sims.argmax())
        return b.keys[i] if sims[i] >= threshold else None

    async def close(self) -> None:
        self._buckets.clear()
        self._count = 0


def encode_vector(vec: np.ndarray) -> bytes:
    return vec.astype("<f4").tobytes()


def decode_vector(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


class RedisVectors(MemoryVectors):
    """The index of the Redis backend: vectors appended to a stream every replica reads before it searches."""

    def __init__(self, redis, prefix: str, max_vectors: int, timeout_s: float, retry_s: float) -> None:
        super().__init__(max_vectors)
        self._redis = redis
        self._stream = prefix + "vec"
        self._timeout = timeout_s
        self._last = "0-0"  # what this replica has read of the stream (0-0: nothing yet, read it whole)
        self._reading: asyncio.Future | None = None
        self._outage = Outage(retry_s, "cache: redis unavailable for the semantic index (%s); it searches what it "
                                       "holds for %.1f s at a time")
        self._failed = self._outage.failed

    async def add(self, bucket: str, key: str, vec: np.ndarray, ttl_s: float) -> None:
        expires = time.time() + ttl_s
        self._put(bucket, key, vec, expires)
        if not self._outage.up:
            return
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._redis.xadd(self._stream, {"b": bucket, "k": key, "x": repr(expires), "v": encode_vector(vec)},
                                       maxlen=self._max, approximate=True)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)

    async def search(self, bucket: str, vec: np.ndarray, threshold: float) -> str | None:
        await self.follow()
        return await super().search(bucket, vec, threshold)

    async def follow(self) -> None:
        """Read what the stream gained since the last read (the whole stream the first time); one read at a time,
        the searches that come meanwhile wait for it."""
        if not self._outage.up:
            return
        reading = self._reading
        if reading is None or reading.done():
            reading = self._reading = asyncio.ensure_future(self._read())
        await asyncio.shield(reading)

    async def _read(self) -> None:
        now = time.time()
        try:
            async with asyncio.timeout(max(self._timeout * 20, 1.0)):
                while True:
                    got = await self._redis.xread({self._stream: self._last}, count=5000)
                    if not got:
                        return
                    _, items = got[0]
                    for ident, fields in items:
                        expires = float(fields[b"x"])
                        if expires > now:
                            self._put(fields[b"b"].decode(), fields[b"k"].decode(), decode_vector(fields[b"v"]), expires)
                    self._last = items[-1][0].decode() if isinstance(items[-1][0], bytes) else items[-1][0]
                    if len(items) < 5000:
                        return
        except (RedisError, OSError, asyncio.TimeoutError, KeyError, ValueError) as exc:
            self._failed(exc)
