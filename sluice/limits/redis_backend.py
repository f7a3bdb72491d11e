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

# Arguments are few and mostly packed once per plan: a command of a few arguments is far
# cheaper for the client to pack than one of five per check (bench/README.md).
# KEYS: one per check. ARGV[1]: request id; ARGV[2]: the plan, per check "kind limit rate
# measure window;" (``_spec``); ARGV[3]: one number per measure (costs, or deltas to settle);
# ARGV[4] (acquire only): the ttl of each window, in ``_WINDOWS`` order.
_UNPACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rid = ARGV[1]
local per_measure, ttls, checks = {}, {}, {}
for v in string.gmatch(ARGV[3], '%S+') do per_measure[#per_measure + 1] = tonumber(v) end
for v in string.gmatch(ARGV[4] or '', '%S+') do ttls[#ttls + 1] = tonumber(v) end
for kind, limit, rate, m, w in string.gmatch(ARGV[2], '(%a+) (%S+) (%S+) (%d) (%d);') do
  checks[#checks + 1] = {kind, tonumber(limit), tonumber(rate), per_measure[tonumber(m) + 1], ttls[tonumber(w) + 1]}
end
"""

# Returns {ok, failed index (0-based, -1), remaining..., reset...} with numbers as strings.
_ACQUIRE = _UNPACK + """
local n = #KEYS
local rem, rst, lvl = {}, {}, {}
local failed = -1
for i = 1, n do
  local kind, limit, rate, cost, ttl = unpack(checks[i])
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
    local kind, limit, rate, cost, ttl = unpack(checks[i])
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

_SETTLE = _UNPACK + """
for i = 1, #KEYS do
  local kind, limit, rate, delta = unpack(checks[i])
  if kind == 'bucket' then
    local st = redis.call('HMGET', KEYS[i], 'l', 't')
    -- a bucket expires once it would be full again, so a missing one is full: a request that
    -- outlived it still settles (more used than reserved is charged), as in memory
    if st[1] or delta > 0 then
      local level = limit
      if st[1] then level = math.min(limit, tonumber(st[1]) + math.max(0, now - tonumber(st[2])) * rate) end
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


_WINDOWS = ("minute", "lease", "day", "month")
CHARGE_TTL_S = 2 * 86_400  # a batch line is retried within its batch's 24 h window


def _numbers(values: Sequence[float]) -> str:
    return " ".join(repr(float(v)) for v in values)


def _spec(plan: Plan) -> bytes:
    """The plan's checks as the scripts read them, packed once and kept on the plan."""
    if plan.packed is None:
        plan.packed = "".join(f"{c.kind} {float(c.limit)!r} {float(c.rate)!r} {c.measure} {_WINDOWS.index(c.window)};"
                              for c in plan.checks).encode()
    return plan.packed


class RedisBackend(LimitBackend):
    """Counters shared by every replica; a slow or dead Redis is an error within the timeout, never a hang."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self._timeout = timeout_s
        self._redis = aioredis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                        health_check_interval=30, max_connections=256)
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._settle = self._redis.register_script(_SETTLE)

    async def acquire(self, request_id: str, plan: Plan, amounts: Sequence[float], ttl: Mapping[str, float]) -> Verdict:
        args = (request_id, _spec(plan), _numbers(amounts), _numbers([ttl[w] for w in _WINDOWS]))
        try:
            async with asyncio.timeout(self._timeout * 2):  # no task per call, unlike wait_for
                raw = await self._acquire(keys=plan.keys, args=args)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None
        n = len(plan.checks)
        return Verdict(ok=int(raw[0]) == 1, failed=int(raw[1]),
                       remaining=[float(x) for x in raw[2:2 + n]], reset_s=[float(x) for x in raw[2 + n:2 + 2 * n]])

    async def settle(self, request_id: str, plan: Plan, deltas: Sequence[float]) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._settle(keys=plan.keys, args=(request_id, _spec(plan), _numbers(deltas)))
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None

    async def charged(self, key: str) -> list[float] | None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                raw = await self._redis.get(key)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None
        return [float(x) for x in raw.split()] if raw else None

    async def charge(self, key: str, amounts: Sequence[float]) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._redis.set(key, _numbers(amounts), ex=CHARGE_TTL_S)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self._timeout * 2):
                await self._redis.ping()
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            raise BackendUnavailable(type(exc).__name__) from None

    async def close(self) -> None:
        await self._redis.aclose()
