"""Where entries live: this process's memory (bounded by bytes, least recently used out first) or Redis
(shared by replicas). Both answer ``get``/``put``/``purge``; neither ever fails a request: a dead or
slow Redis is a miss within its timeout, and for ``redis_retry_s`` after a failure the cache is not
asked at all (``available`` is False: requests bypass it), so no request waits on a Redis that is down.

Each entry is tagged with the identity that made it, its team, the model and the route, so an operator
can purge by any of them (``purge``); offboarding an identity purges what it made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..core.cache_config import CacheStorage
from .outage import Outage
from .vectors import MemoryVectors, RedisVectors

log = logging.getLogger("sluice.cache")
TAGS = ("identity", "team", "model", "route")


class CacheStore(Protocol):
    available: bool
    vectors: MemoryVectors  # the semantic index of these entries (mode `semantic`; sluice.cache.vectors)

    async def get(self, key: str) -> bytes | None: ...

    async def put(self, key: str, data: bytes, ttl_s: float, tags: dict[str, str]) -> None: ...

    async def purge(self, kind: str, value: str) -> int: ...

    async def close(self) -> None: ...


class MemoryStore:
    """Entries in this process, at most ``max_bytes`` of them (keys and data counted)."""

    available = True

    def __init__(self, max_bytes: int, max_vectors: int = 100_000) -> None:
        self.vectors = MemoryVectors(max_vectors)
        self._max = max_bytes
        self._used = 0
        self._entries: OrderedDict[str, tuple[float, bytes, dict[str, str]]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        got = self._entries.get(key)
        if got is None:
            return None
        if got[0] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return got[1]

    async def put(self, key: str, data: bytes, ttl_s: float, tags: dict[str, str]) -> None:
        size = len(key) + len(data)
        if size > self._max:
            return
        if key in self._entries:
            self._drop(key)
        while self._used + size > self._max:
            self._drop(next(iter(self._entries)))
        self._entries[key] = (time.monotonic() + ttl_s, data, tags)
        self._used += size

    def _drop(self, key: str) -> None:
        _, data, _ = self._entries.pop(key)
        self._used -= len(key) + len(data)

    async def purge(self, kind: str, value: str) -> int:
        gone = [k for k, (_, _, tags) in self._entries.items() if tags.get(kind) == value]
        for k in gone:
            self._drop(k)
        return len(gone)

    @property
    def used_bytes(self) -> int:
        return self._used

    async def close(self) -> None:
        await self.vectors.close()
        self._entries.clear()
        self._used = 0


class RedisStore:
    """Entries in Redis, one string each with its TTL; a set per tag value names the entries to purge."""

    def __init__(self, settings: CacheStorage) -> None:
        t = settings.redis_timeout_s
        self._timeout = t
        self._prefix = settings.key_prefix
        self._redis = aioredis.from_url(settings.redis_url, socket_timeout=t, socket_connect_timeout=t,
                                        health_check_interval=30, max_connections=256)
        self.vectors = RedisVectors(self._redis, self._prefix, settings.max_vectors, t, settings.redis_retry_s)
        self._outage = Outage(settings.redis_retry_s, "cache: redis unavailable (%s); requests bypass the cache for "
                                                      "%.1f s at a time")
        self._failed = self._outage.failed

    @property
    def available(self) -> bool:
        return self._outage.up

    async def get(self, key: str) -> bytes | None:
        if not self.available:
            return None
        try:
            async with asyncio.timeout(self._timeout * 2):  # connect and read each bounded, and the whole
                return await self._redis.get(self._prefix + "e:" + key)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)
            return None

    async def put(self, key: str, data: bytes, ttl_s: float, tags: dict[str, str]) -> None:
        if not self.available:
            return
        p = self._prefix
        ttl = max(1, int(ttl_s + 0.999))
        try:
            async with asyncio.timeout(self._timeout * 2):
                pipe = self._redis.pipeline(transaction=False)
                pipe.set(p + "e:" + key, data, ex=ttl)
                for kind, value in tags.items():
                    tag = f"{p}t:{kind}:{value}"
                    pipe.sadd(tag, key)
                    pipe.expire(tag, ttl, gt=True)
                    pipe.expire(tag, ttl, nx=True)
                await pipe.execute()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)

    async def purge(self, kind: str, value: str) -> int:
        """Entries tagged so, deleted on every replica at once (they share them); errors reach the operator."""
        tag = f"{self._prefix}t:{kind}:{value}"
        async with asyncio.timeout(max(self._timeout * 20, 2.0)):
            keys = await self._redis.smembers(tag)
            if not keys:
                return 0
            names = [self._prefix + "e:" + k.decode() for k in keys]
            gone = 0
            for i in range(0, len(names), 500):
                gone += await self._redis.delete(*names[i:i + 500])
            await self._redis.delete(tag)
            return gone

    async def close(self) -> None:
        await self._redis.aclose()


async def purge_quietly(store: CacheStore, kind: str, value: str) -> None:
    """A purge nobody waits on (offboarding): a failure is logged by its kind, never raised."""
    try:
        await store.purge(kind, value)
    except Exception as exc:
        log.warning("cache: purge of %s %s failed (%s); purge it again with sluice cache purge", kind, value,
                    type(exc).__name__)


def build_store(settings: CacheStorage) -> CacheStore:
    if settings.backend == "redis":
        return RedisStore(settings)
    return MemoryStore(settings.max_bytes, settings.max_vectors)
