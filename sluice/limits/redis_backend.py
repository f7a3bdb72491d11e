"""The distributed backend: counters in Redis, every decision one Lua script, so replicas
share exact counts with no read-then-write race. Time is Redis's own clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .backend import BackendUnavailable, LimitBackend
from .checks import Verdict
from .plan import Plan

# KEYS: one per check. ARGV: request id, then per check: kind, limit, rate, cost, ttl.
# Returns {ok, failed index (0-based, -1), remaining..., reset...} with numbers as strings.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rid = ARGV[1]
local n = #KEYS
local rem, rst, lvl = {}, {}, {}
local failed = -1
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local kind, limit, rate = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local cost, ttl = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
  local fits
  if kind == 'bucket' then
    local st = redis.call('HMGET', KEYS[i], 'l', 't')
    local level = limit
    if st[1] then level = math.min(limit, tonumber(st[1]) + math.max(0, now - tonumber(st[2])) * rate) end
    lvl[i] = level
    fits = level >= cost
    local after = level
    if fits then after = level - cost end
    rem[i] = after
    if fits then
      if after < limit and rate > 0 then rst[i] = (limit - after) / rate else rst[i] = 0 end
    else
      if rate > 0 then rst[i] = (cost - level) / rate else rst[i] = ttl end
    end
  elseif kind == 'lease' then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local live = redis.call('ZCARD', KEYS[i])
    fits = live + 1 <= limit
    if fits then rem[i] = limit - live - 1; rst[i] = 0 else
      rem[i] = limit - live
      local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      rst[i] = tonumber(first[2]) - now
    end
  else
    local v = tonumber(redis.call('GET', KEYS[i]) or '0')
    fits = v + cost <= limit
    if fits then rem[i] = limit - v - cost else rem[i] = limit - v end
    rst[i] = ttl
  end
  if (not fits) and failed < 0 then failed = i - 1 end
end
if failed < 0 then
  for i = 1, n do
    local b = 1 + (i - 1) * 5
    local kind, limit, rate = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local cost, ttl = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])
    if kind == 'bucket' then
      redis.call('HSET', KEYS[i], 'l', tostring(lvl[i] - cost), 't', tostring(now))
      local full_in = 60
      if rate > 0 then full_in = math.ceil((limit - (lvl[i] - cost)) / rate) + 1 end
      redis.call('EXPIRE', KEYS[i], full_in)
    elseif kind == 'lease' then
      redis.call('ZADD', KEYS[i], now + ttl, rid)
      redis.call('EXPIRE', KEYS[i], math.ceil(ttl) + 1)
    else
      redis.call('INCRBYFLOAT', KEYS[i], tostring(cost))
      if redis.call('TTL', KEYS[i]) < 0 then redis.call('EXPIRE', KEYS[i], math.ceil(ttl) + 60) end
    end
  end
end
local out = {failed < 0 and 1 or 0, failed}
for i = 1, n do out[#out + 1] = tostring(rem[i]) end
for i = 1, n do out[#out + 1] = tostring(rst[i]) end
return out
"""

# KEYS: one per check. ARGV: request id, then per check: kind, limit, rate, delta.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rid = ARGV[1]
for i = 1, #KEYS do
  local b = 1 + (i - 1) * 4
  local kind, limit, rate, delta = ARGV[b + 1], tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  if kind == 'bucket' then
    local st = redis.call('HMGET', KEYS[i], 'l', 't')
    if st[1] then
      local level = math.min(limit, tonumber(st[1]) + math.max(0, now - tonumber(st[2])) * rate)
      level = math.min(limit, level - delta)
      redis.call('HSET', KEYS[i], 'l', tostring(level), 't', tostring(now))
      local full_in = 60
      if rate > 0 then full_in = math.ceil((limit - level) / rate) + 1 end
      redis.call('EXPIRE', KEYS[i], full_in)
    end
  elseif kind == 'lease' then
    redis.call('ZREM', KEYS[i], rid)
  elseif delta ~= 0 and redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[i], tostring(delta))
  end
end
return 1
"""


class RedisBackend(LimitBackend):
    """Counters shared by every replica; a slow or dead Redis is an error within the timeout, never a hang."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                        health_check_interval=30, max_connections=256)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)

    async def acquire(self, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> Verdict:
        args: list[str | float] = [request_id]
        for c in plan.checks:
            args += [c.kind, c.limit, c.rate, amounts[c.measure], ttl[c.window]]
        try:
            async with asyncio.timeout(self._timeout * 2):  # no task per call, unlike wait_for
                raw = await self._acquire(keys=plan.keys, args=args)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None
        n = len(plan.checks)
        return Verdict(ok=int(raw[0]) == 1, failed=int(raw[1]),
                       remaining=[float(x) for x in raw[2:2 + n]], reset_s=[float(x) for x in raw[2 + n:2 + 2 * n]])

    async def settle(self, request_id: str, plan: Plan, deltas: Sequence[float]) -> None:
        args: list[str | float] = [request_id]
        for c in plan.checks:
            args += [c.kind, c.limit, c.rate, deltas[c.measure]]
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._settle(keys=plan.keys, args=args)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None

    async def close(self) -> None:
        await self._redis.aclose()
