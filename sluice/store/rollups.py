"""Usage rollups: the ledger's rows summed per minute, hour and day and per group, so every reader's cost
depends on the time range and the number of groups, not on the number of requests.

A group is (identity, team, key, model, version, route, API, status class, error code); ``None`` is stored
as ``''`` because a NULL never conflicts in a unique key (on SQLite, nor on Postgres before 15). The status
class is the status's hundred (200, 400, 500), except 429, its own class (limit hits are read apart from
other refusals). The error code is sluice's own (a bounded set), so the dashboard can say why requests
were refused without reading them.

Each rollup row holds the group's requests, errors (status >= 400), streams, tokens, cost (integer
nano-units, so sums stay exact), the newest record's time, and latency and time to first token as fixed
bucket histograms with their minimum and maximum. Buckets are log-spaced, three per doubling from 1 ms to
2^20 ms (~17.5 min): a bucket's upper edge is 2^(1/3) times its lower one, and a percentile estimated as
the geometric middle of the bucket holding its rank (clamped to the range's minimum and maximum) is
within 2^(1/6) - 1 = 12.3% of the value at that rank (within 0.5 ms below 1 ms; above 2^20 ms it is the
maximum). The histograms add element by element, so any set of rows merges into the histogram of all
their requests.

The ledger's batch writes the raw rows and, in the same transaction, one upsert per group and table for
the rows it actually inserted (a request id already stored is skipped in both), in key order so two
writers lock rows in the same order. The rollup tables do not reference the raw table: dropping raw rows
(retention, partitions) leaves them whole.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import partial
from operator import is_not, itemgetter

from ..core.types import UsageRecord

EDGES = tuple(2 ** (k / 3) for k in range(61))  # ms: 1 .. 2^20; bucket i is [EDGES[i-1], EDGES[i])
BUCKETS = len(EDGES) + 1  # below 1 ms, 60 between the edges, from 2^20 ms up
GRAINS = {"minute": 60, "hour": 3600, "day": 86400}
TABLES = {g: f"usage_{g}" for g in GRAINS}
# the group, in the rollup key's order after the bucket
KEY = ("identity_id", "team", "key_id", "model", "version", "route", "api", "status_class", "error_code")
SUMS = ("requests", "errors", "streams", "prompt_tokens", "completion_tokens", "cached_tokens",
        "cache_creation_tokens", "cost_nanos")
LAT = tuple(f"lat_{i:02d}" for i in range(BUCKETS))
TTFT = tuple(f"ttft_{i:02d}" for i in range(BUCKETS))
LOWEST = ("lat_min", "ttft_min")
HIGHEST = ("lat_max", "ttft_max", "last_ts")
# a rollup row's values after its key, in this order
VALUES = (*SUMS, "lat_min", "lat_max", "ttft_min", "ttft_max", "last_ts", *LAT, *TTFT)
COLUMNS = ("bucket", *KEY, *VALUES)
_V = {name: i for i, name in enumerate(VALUES)}
_LAT0, _TTFT0 = _V["lat_00"], _V["ttft_00"]
_LMIN, _LMAX, _TMIN, _TMAX, _LAST = (_V[n] for n in ("lat_min", "lat_max", "ttft_min", "ttft_max", "last_ts"))
_ZERO = [0] * len(SUMS) + [None] * 5 + [0] * (2 * BUCKETS)  # a group's values before any record
# a record's fields by their place in its tuple (``fold``): its group as stored but with its status (a run's key;
# its class is taken once per run), and its values
_AT = {name: i for i, name in enumerate(UsageRecord.__struct_fields__)}
_TS_AT = _AT["ts"]
_GROUP = itemgetter(*(_AT[n] for n in ("identity_id", "team", "key_id", "model", "version", "route", "api", "status",
                                         "error_code")))
_TOKENS = tuple(itemgetter(_AT[n]) for n in SUMS[3:])
_STREAM, _LATENCY, _TTFT, _TS = (itemgetter(_AT[n]) for n in ("stream", "latency_ms", "ttft_ms", "ts"))
_BUCKET = partial(bisect_right, EDGES)  # bucket_of, in C
_IS_SET = partial(is_not, None)


def status_class(status: int) -> int:
    """200, 300, 400, 500; 429 (a limit hit) its own class."""
    return 429 if status == 429 else status // 100 * 100


def bucket_of(ms: float) -> int:
    """The histogram bucket of a duration in ms."""
    return bisect_right(EDGES, ms)


def fold(rows: Iterable[tuple], grain: int = 60) -> dict[tuple, list]:
    """Rollup values per (bucket start, group) of these records, each given as its ``msgspec.structs.astuple``
    (the tuple the batch's INSERT binds): what the rollup rows gain from them.

    The records are first put in runs of one time bucket and one raw group (the status itself, not its class),
    the group taken by ``itemgetter`` in C; each run's sums, extremes and histograms are then taken by C
    iterators over it (``sum``, ``min``, ``max``, ``Counter`` of the buckets), so the Python work per record is
    the run's look-up alone (it was ~190 bytecodes a record). Tuples, not the records: a ``UsageRecord``'s
    attribute read from C (``attrgetter``) goes through the type's attribute look-up, ~17 ns each, 3x a tuple's
    item. Runs of one status class merge as ``merge_into`` merges rows. tests/store/test_usage_rollups.py
    restates the fold record by record."""
    runs: dict[tuple, list] = {}
    for r in rows:
        runs.setdefault((r[_TS_AT] // grain, _GROUP(r)), []).append(r)
    out: dict[tuple, list] = {}
    for (start, (identity, team, key_id, model, version, route, api, status, error)), run in runs.items():
        v = _ZERO.copy()
        n = v[0] = len(run)
        v[1] = n if status >= 400 else 0
        v[2] = sum(map(_STREAM, run))
        v[3], v[4], v[5], v[6], v[7] = (sum(map(get, run)) for get in _TOKENS)
        lats = list(map(_LATENCY, run))
        v[_LMIN], v[_LMAX] = min(lats), max(lats)
        for b, c in Counter(map(_BUCKET, lats)).items():
            v[_LAT0 + b] = c
        ttfts = list(filter(_IS_SET, map(_TTFT, run)))
        if ttfts:
            v[_TMIN], v[_TMAX] = min(ttfts), max(ttfts)
            for b, c in Counter(map(_BUCKET, ttfts)).items():
                v[_TTFT0 + b] = c
        v[_LAST] = max(map(_TS, run))
        key = (int(start) * grain, identity or "", team or "", key_id or "", model or "", version or "", route or "",
               api or "", status_class(status), error or "")
        got = out.get(key)
        if got is None:
            out[key] = v
        else:
            merge_into(got, v)
    return out


def merge_into(into: list, v: Sequence) -> None:
    """Add one rollup's values to another's (sums and histograms add; minimum, maximum and newest merge)."""
    for i, x in enumerate(v):
        if x is None:
            continue
        y = into[i]
        if i in (_LMIN, _TMIN):
            into[i] = x if y is None or x < y else y
        elif i in (_LMAX, _TMAX, _LAST):
            into[i] = x if y is None or x > y else y
        else:
            into[i] = y + x


def regrain(minutes: dict[tuple, list], grain: int) -> dict[tuple, list]:
    """Minute rollups summed into a coarser grain (hour, day)."""
    out: dict[tuple, list] = {}
    for key, v in minutes.items():
        k = (key[0] // grain * grain, *key[1:])
        got = out.get(k)
        if got is None:
            out[k] = list(v)
        else:
            merge_into(got, v)
    return out


def rows(groups: dict[tuple, list]) -> list[tuple]:
    """Upsert parameters, in key order: every writer locks the rows of a batch in the same order."""
    return [(*key, *groups[key]) for key in sorted(groups)]


def upsert_sql(table: str, style: str) -> str:
    """One group's upsert: ``qmark`` (sqlite3), ``dollar`` (asyncpg) or ``named`` (SQLAlchemy ``text``)."""
    if style == "qmark":
        marks = ", ".join("?" * len(COLUMNS))
    elif style == "dollar":
        marks = ", ".join(f"${i}" for i in range(1, len(COLUMNS) + 1))
    else:
        marks = ", ".join(f":{c}" for c in COLUMNS)
    sets = []
    for c in VALUES:
        old, new = f"{table}.{c}", f"excluded.{c}"
        if c in LOWEST or c in HIGHEST:  # NULL (no value yet) on either side gives the other
            cmp = "<" if c in LOWEST else ">"
            sets.append(f"{c} = CASE WHEN {old} IS NULL OR {new} {cmp} {old} THEN {new} ELSE {old} END")
        else:
            sets.append(f"{c} = {old} + {new}")
    return (f"INSERT INTO {table} ({', '.join(COLUMNS)}) VALUES ({marks}) "
            f"ON CONFLICT (bucket, {', '.join(KEY)}) DO UPDATE SET {', '.join(sets)}")


def per_grain(inserted: list[tuple]) -> list[tuple[str, list[tuple]]]:
    """(table, upsert rows) for each grain, from the records a batch inserted (as ``fold`` takes them)."""
    minutes = fold(inserted)
    return [(TABLES["minute"], rows(minutes)), (TABLES["hour"], rows(regrain(minutes, 3600))),
            (TABLES["day"], rows(regrain(minutes, 86400)))]


def spans(since: float, until: float | None) -> tuple[list[tuple[float, float]], dict[str, list[tuple[int, float]]]]:
    """``[since, until)`` as raw-row edges, each within one minute, and whole minutes, hours and days: each
    rollup row read lies wholly inside the range, and the raw rows read are at most a minute at each end."""
    hi = math.inf if until is None else until
    lo = max(since, 0.0)
    raw: list[tuple[float, float]] = []
    out: dict[str, list[tuple[int, float]]] = {t: [] for t in TABLES.values()}
    if hi <= lo:
        return raw, out
    a, b = math.ceil(lo / 60) * 60, (hi if hi == math.inf else math.floor(hi / 60) * 60)
    if a > b:  # within one minute
        return [(lo, hi)], out
    if a == b:  # across one minute's edge: a piece on each side
        return [(x, y) for x, y in ((lo, float(a)), (float(a), hi)) if x < y], out
    if lo < a:
        raw.append((lo, float(a)))
    if b < hi:
        raw.append((float(b), hi))
    levels = list(GRAINS.items())
    for i, (grain, size) in enumerate(levels):
        table = TABLES[grain]
        if i + 1 == len(levels):
            out[table].append((a, b))
            break
        nxt = levels[i + 1][1]
        a2, b2 = math.ceil(a / nxt) * nxt, (b if b == math.inf else math.floor(b / nxt) * nxt)
        if a2 >= b2:
            out[table].append((a, b))
            break
        if a < a2:
            out[table].append((a, a2))
        if b2 < b:
            out[table].append((b2, b))
        a, b = a2, b2
    return raw, out


def percentile(hist: Sequence[int], q: float, lowest: float | None, highest: float | None) -> float | None:
    """The value at rank ceil(q% of n) estimated from a histogram (see the module's error bound); None if empty."""
    n = sum(hist)
    if n == 0:
        return None
    rank = max(1, math.ceil(q / 100 * n))
    seen = 0
    for i, c in enumerate(hist):
        seen += c
        if seen >= rank:
            break
    if i == 0:
        mid = EDGES[0] / 2
    elif i == len(EDGES):
        mid = highest if highest is not None else EDGES[-1]
    else:
        mid = math.sqrt(EDGES[i - 1] * EDGES[i])
    if lowest is not None:
        mid = max(mid, lowest)
    if highest is not None:
        mid = min(mid, highest)
    return mid


def postgres_insert_and_fold(insert: str, edges_param: int) -> str:
    """One Postgres statement: ``insert`` (the raw rows, ``ON CONFLICT DO NOTHING``) and, for the rows it
    actually inserted, the upsert of their groups into every grain's table, folded by the server (``fold``'s
    rules in SQL: the same buckets, since ``width_bucket`` over ``EDGES`` counts the edges at or below a value
    as ``bisect_right`` does, and the same floor of the time). Nothing of the rollups crosses the wire:
    ``$edges_param`` is ``EDGES``. Answers the number of rows inserted."""
    used = ("ts", "identity_id", "team", "key_id", "model", "version", "route", "api", "status", "error_code",
            "stream", "prompt_tokens", "completion_tokens", "cached_tokens", "cache_creation_tokens", "cost_nanos",
            "latency_ms", "ttft_ms")
    parts = [f"ins AS ({insert} RETURNING {', '.join(used)})",
             f"r AS (SELECT *, width_bucket(latency_ms, ${edges_param}::float8[]) AS lb, "
             f"width_bucket(ttft_ms, ${edges_param}::float8[]) AS tb, "
             "CASE WHEN status = 429 THEN 429 ELSE status / 100 * 100 END AS sc FROM ins)"]
    group = ", ".join(str(i) for i in range(1, len(KEY) + 2))
    for grain, size in GRAINS.items():
        table = TABLES[grain]
        q = f"floor(ts / {size})"
        bucket = f"((CASE WHEN {q} * {size} > ts THEN {q} - 1 ELSE {q} END) * {size})::bigint"
        keys = [f"coalesce({k}, '')" for k in KEY]
        keys[KEY.index("status_class")] = "sc"
        sums = ["count(*)", "count(*) FILTER (WHERE status >= 400)", "count(*) FILTER (WHERE stream)",
                *(f"coalesce(sum({c}), 0)::bigint" for c in SUMS[3:])]
        extremes = ["min(latency_ms)", "max(latency_ms)", "min(ttft_ms)", "max(ttft_ms)", "max(ts)"]
        hist = [f"count(*) FILTER (WHERE lb = {i})" for i in range(BUCKETS)]
        hist += [f"count(*) FILTER (WHERE tb = {i})" for i in range(BUCKETS)]
        select = ", ".join([bucket, *keys, *sums, *extremes, *hist])
        upsert = upsert_sql(table, "dollar")
        head, conflict = upsert[:upsert.index(" VALUES (")], upsert[upsert.index(" ON CONFLICT"):]
        # in key order, as the client-side upserts were: two writers lock a batch's rows in the same order
        parts.append(f"{grain} AS ({head} SELECT {select} FROM r GROUP BY {group} ORDER BY {group}{conflict})")
    return f"WITH {', '.join(parts)} SELECT count(*) FROM ins"
