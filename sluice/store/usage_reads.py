"""Reads of the usage ledger's rollups (``rollups.py``): sums per group over any ``[since, until)``, and
whole rollup rows with their histograms for the dashboard.

A range is read as whole days, hours and minutes from the rollup tables, and the raw rows of the at most
one minute at each end that is not whole (``rollups.spans``): the answers equal the sums of the raw rows
exactly, at a cost set by the range and the number of groups. A minute-aligned range reads no raw row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec
from sqlalchemy import and_, func, or_, select

from . import rollups
from . import schema as t

DIMENSIONS = {"identity": "identity_id", "key": "key_id", "team": "team", "model": "model", "route": "route",
              "api": "api", "version": "version"}
# what the summary sums, in UsageGroup's order
TOTALS = ("requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos")
_TABLES = {"usage_minute": t.usage_minute, "usage_hour": t.usage_hour, "usage_day": t.usage_day}


class UsageRollup(msgspec.Struct, kw_only=True):
    """Rollup rows merged per group: sums, and latency and TTFT histograms (``rollups.EDGES``) with their extremes."""

    key: tuple
    requests: int
    errors: int
    streams: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    cost_nanos: int
    lat_min: float | None
    lat_max: float | None
    ttft_min: float | None
    ttft_max: float | None
    last_ts: float | None
    latency: list[int]
    ttft: list[int]

    def latency_ms(self, q: float) -> float | None:
        """The latency at percentile ``q`` (rank ceil(q% of n)), within the buckets' bound."""
        return rollups.percentile(self.latency, q, self.lat_min, self.lat_max)

    def ttft_ms(self, q: float) -> float | None:
        return rollups.percentile(self.ttft, q, self.ttft_min, self.ttft_max)

    def plus(self, other: UsageRollup) -> UsageRollup:
        """Both rollups' requests as one (under this one's key)."""
        def low(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else min(a, b)

        def high(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else max(a, b)

        return UsageRollup(key=self.key, **{f: getattr(self, f) + getattr(other, f) for f in rollups.SUMS},
                           lat_min=low(self.lat_min, other.lat_min), lat_max=high(self.lat_max, other.lat_max),
                           ttft_min=low(self.ttft_min, other.ttft_min), ttft_max=high(self.ttft_max, other.ttft_max),
                           last_ts=high(self.last_ts, other.last_ts),
                           latency=[a + b for a, b in zip(self.latency, other.latency)],
                           ttft=[a + b for a, b in zip(self.ttft, other.ttft)])


def _in(column: Any, ranges: list[tuple[float, float]]) -> Any:
    return or_(*[and_(column >= lo, column < hi) if hi != math.inf else column >= lo for lo, hi in ranges])


def _rollup_dim(table: Any, dim: str) -> Any:
    if dim == "day":
        return table.c.bucket // 86400
    if dim == "bucket":
        return table.c.bucket
    return table.c[DIMENSIONS.get(dim, dim)]


def day_of(ts: float) -> int:
    """The whole days since the epoch before ``ts``, as the rollups' buckets count them (``ts / 86400`` may round up)."""
    n = math.floor(ts / 86400)
    return n - 1 if n * 86400 > ts else n


def _key(values: Sequence[Any]) -> tuple:
    return tuple(None if v == "" else v for v in values)


async def sums(conn: Any, dims: Sequence[str], since: float, until: float | None,
               key_id: str | None = None) -> dict[tuple, list[int]]:
    """``TOTALS`` per value of ``dims`` over ``[since, until)`` (of one key's requests with ``key_id``)."""
    raw, spans = rollups.spans(since, until)
    out: dict[tuple, list[int]] = {}

    def add(key: tuple, values: Sequence[Any]) -> None:
        got = out.setdefault(key, [0] * len(TOTALS))
        for i, v in enumerate(values):
            got[i] += int(v or 0)

    for name, ranges in spans.items():
        table = _TABLES[name]
        cols = [_rollup_dim(table, d).label(f"d{i}") for i, d in enumerate(dims)]
        # one statement per range: a single range is an index-only scan of ix_usage_<grain>_sums (migration
        # 0019) on Postgres; two OR'ed ranges became a bitmap scan, which reads the ~1.2 KB rows themselves
        for lo, hi in ranges:
            where = [_in(table.c.bucket, [(lo, hi)])] + ([table.c.key_id == key_id] if key_id else [])
            q = select(*cols, *[func.sum(table.c[s]) for s in TOTALS]).where(*where).group_by(*cols)
            for row in await conn.execute(q):
                add(_key(row[:len(dims)]), row[len(dims):])
    u = t.usage.c
    errors = func.sum(func.cast(u.status >= 400, u.prompt_tokens.type))
    grouped = [d for d in dims if d != "day"]
    cols = [u[DIMENSIONS[d]].label(f"d{i}") for i, d in enumerate(grouped)]
    for lo, hi in raw:  # each within one minute, so within one day: the day is the range's
        where = [_in(u.ts, [(lo, hi)])] + ([u.key_id == key_id] if key_id else [])
        q = select(*cols, func.count(), errors, *[func.sum(u[s]) for s in TOTALS[2:]]).where(*where).group_by(*cols)
        for row in await conn.execute(q):
            if not row[len(cols)]:
                continue  # no row at all (no grouping column: one row of NULL sums)
            named = iter(row[:len(cols)])
            add(tuple(day_of(lo) if d == "day" else next(named) for d in dims), row[len(cols):])
    return out


def ordered(keys: Sequence[tuple], dialect: str) -> list[tuple]:
    """Keys in the order the raw rows' ``ORDER BY`` gave them: NULL first on SQLite, last on Postgres."""
    none_first = dialect == "sqlite"
    return sorted(keys, key=lambda k: tuple(((v is None) != none_first, v if v is not None else "") for v in k))


async def merged(conn: Any, dims: Sequence[str], grain: str, since: float, until: float | None = None) -> list[UsageRollup]:
    """Whole rollup rows of one grain with buckets in ``[since, until)``, merged per value of ``dims``."""
    table = _TABLES[rollups.TABLES[grain]]
    c = table.c
    cols = [_rollup_dim(table, d).label(f"d{i}") for i, d in enumerate(dims)]
    values = [*(func.sum(c[s]) for s in rollups.SUMS), func.min(c.lat_min), func.max(c.lat_max), func.min(c.ttft_min),
              func.max(c.ttft_max), func.max(c.last_ts), *(func.sum(c[h]) for h in rollups.LAT + rollups.TTFT)]
    q = (select(*cols, *values).where(_in(c.bucket, [(since, math.inf if until is None else until)]))
         .group_by(*cols).order_by(*cols))
    n, b = len(dims), rollups.BUCKETS
    out = []
    for row in await conn.execute(q):
        s = [int(v or 0) for v in row[n: n + len(rollups.SUMS)]]
        ext = row[n + len(rollups.SUMS): n + len(rollups.SUMS) + 5]
        hist = [int(v or 0) for v in row[n + len(rollups.SUMS) + 5:]]
        out.append(UsageRollup(key=_key(row[:n]), **dict(zip(rollups.SUMS, s)), lat_min=ext[0], lat_max=ext[1],
                               ttft_min=ext[2], ttft_max=ext[3], last_ts=ext[4], latency=hist[:b], ttft=hist[b:]))
    return out
