"""The Postgres usage table's day partitions (migration 0016): made ahead, filled from the default partition,
dropped whole.

A day's partition is ``usage_pYYYYMMDD`` for ``ts`` in ``[day * 86400, (day + 1) * 86400)``; ``usage_default``
takes a row of a day that has none yet, so a write never fails for a missing partition. Making a day's
partition also drains it: in one transaction a new table takes the default partition's rows of that day and
is attached (the default holds only such strays, so the attach's scan of it is short). Every statement that
locks the parent runs under ``lock_timeout``: behind a long read it gives up and is tried on the next run,
instead of queueing the ledger's writes behind it.
"""

from __future__ import annotations

import calendar
import time
from typing import Any

from sqlalchemy import text

from . import schema as t

DAY = 86_400
DEFAULT = "usage_default"
LOCK_TIMEOUT = "2s"
_COLUMNS = ", ".join(c.name for c in t.usage.c)


def name(day: int) -> str:
    """The partition of ``day`` (whole days since the epoch)."""
    return "usage_p" + time.strftime("%Y%m%d", time.gmtime(day * DAY))


def day_of_name(table: str) -> int | None:
    """The day a partition's name stands for, or None (the default partition)."""
    if not (table.startswith("usage_p") and len(table) == 15 and table[7:].isdigit()):
        return None
    return calendar.timegm(time.strptime(table[7:], "%Y%m%d")) // DAY


async def days(conn: Any) -> list[int]:
    """The days that have a partition, oldest first."""
    rows = await conn.execute(text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                                   " WHERE i.inhparent = 'usage'::regclass"))
    return sorted(d for (n,) in rows if (d := day_of_name(n)) is not None)


async def stray_days(conn: Any) -> list[int]:
    """The days of the rows in the default partition."""
    rows = await conn.execute(text(f"SELECT DISTINCT floor(ts / {DAY})::bigint FROM {DEFAULT}"))
    return sorted({int(d) for (d,) in rows} | {int(d) - 1 for (d,) in rows})  # a float quotient may round up


async def make(engine: Any, day: int) -> bool:
    """The partition of ``day``, with the default partition's rows of that day moved in; False if it was there."""
    p, lo, hi = name(day), day * DAY, (day + 1) * DAY
    async with engine.begin() as conn:
        if (await conn.execute(text("SELECT to_regclass(:n)"), {"n": p})).scalar() is not None:
            return False
        await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        await conn.execute(text(f"CREATE TABLE {p} (LIKE usage INCLUDING DEFAULTS)"))
        # the attach then need not scan the new table to prove its rows belong
        await conn.execute(text(f"ALTER TABLE {p} ADD CONSTRAINT {p}_day CHECK (ts >= {lo} AND ts < {hi})"))
        await conn.execute(text(f"WITH moved AS (DELETE FROM {DEFAULT} WHERE ts >= {lo} AND ts < {hi} RETURNING *)"
                                f" INSERT INTO {p} ({_COLUMNS}) SELECT {_COLUMNS} FROM moved"))
        await conn.execute(text(f"ALTER TABLE usage ATTACH PARTITION {p} FOR VALUES FROM ({lo}) TO ({hi})"))
    return True


async def drop(engine: Any, day: int, rows: int | None) -> bool:
    """Drop ``day``'s partition whole; with ``rows`` (what its export wrote) only if it still holds exactly
    that many (it only grows, so then every row of it was exported). False if it did not."""
    p = name(day)
    async with engine.begin() as conn:
        await conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
        if rows is not None:
            await conn.execute(text(f"LOCK TABLE {p} IN SHARE MODE"))  # a late write to this day waits
            if (await conn.execute(text(f"SELECT count(*) FROM {p}"))).scalar_one() != rows:
                return False
        await conn.execute(text(f"DROP TABLE {p}"))
    return True
