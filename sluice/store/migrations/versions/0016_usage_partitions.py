"""Usage retention (issue 29): on Postgres the raw usage rows move into a table partitioned by UTC day, so a
day past ``ledger.raw_retention_days`` is dropped whole instead of deleted row by row; a ``leases`` table on
both stores, so one replica at a time runs retention.

Postgres: ``usage`` becomes ``PARTITION BY RANGE (ts)`` (``ts`` stays the float epoch every reader filters on:
no new column for the writer to fill), one partition per day named ``usage_pYYYYMMDD`` for
``[day * 86400, (day + 1) * 86400)``, and a ``usage_default`` partition that takes any row no day partition
covers (a record of a day not made yet: a write never fails for a missing partition; retention moves those
rows into their day's partition, ``sluice/store/usage_partitions.py``). A partitioned table's unique keys
must hold the partition key: the primary key becomes ``(seq, ts)`` and the idempotency key
``ux_usage_request_id`` ``(request_id, ts)`` (a replayed record keeps its time, so it is still skipped).
The rows already there are copied in ``seq`` order, 100,000 per statement, into a partition per day they
fall on (plus today and the next three), then the old table is dropped and the new one takes its name; the
``seq`` sequence moves with it, so ids continue. SQLite keeps its plain table (retention deletes there in
bounded batches).

Revision ID: 0016
Revises: 0015
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

DAY = 86_400
_CHUNK = 100_000
_AHEAD = 3


def _partition(day: int) -> str:
    return "usage_p" + time.strftime("%Y%m%d", time.gmtime(day * DAY))


def upgrade() -> None:
    op.create_table("leases",
                    sa.Column("name", sa.String(64), primary_key=True),
                    sa.Column("holder", sa.String(128), nullable=False),
                    sa.Column("expires_at", sa.Float, nullable=False))
    if op.get_bind().dialect.name != "postgresql":
        return
    conn = op.get_bind()
    sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence('usage', 'seq')")).scalar_one()
    op.execute("CREATE TABLE usage_parted (LIKE usage INCLUDING DEFAULTS) PARTITION BY RANGE (ts)")
    op.execute(f"ALTER SEQUENCE {sequence} OWNED BY usage_parted.seq")  # else dropping the old table drops it
    days = {int(d) for (d,) in conn.execute(sa.text("SELECT DISTINCT floor(ts / 86400) FROM usage"))}
    today = int(time.time() // DAY)
    for day in sorted(days | set(range(today, today + _AHEAD + 1))):
        op.execute(f"CREATE TABLE {_partition(day)} PARTITION OF usage_parted"
                   f" FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})")
    op.execute("CREATE TABLE usage_default PARTITION OF usage_parted DEFAULT")
    low, high = conn.execute(sa.text("SELECT min(seq), max(seq) FROM usage")).one()
    if low is not None:
        for start in range(low - 1, high, _CHUNK):
            op.execute(f"INSERT INTO usage_parted SELECT * FROM usage WHERE seq > {start} AND seq <= {start + _CHUNK}")
    op.execute("DROP TABLE usage")
    op.execute("ALTER TABLE usage_parted RENAME TO usage")
    op.execute("ALTER TABLE usage ADD CONSTRAINT usage_pkey PRIMARY KEY (seq, ts)")
    op.execute("CREATE UNIQUE INDEX ux_usage_request_id ON usage (request_id, ts)")
    op.execute("CREATE INDEX ix_usage_ts ON usage (ts)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        conn = op.get_bind()
        sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence('usage', 'seq')")).scalar_one()
        op.execute("CREATE TABLE usage_plain (LIKE usage INCLUDING DEFAULTS)")
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY usage_plain.seq")
        # one row per request id again (0007's key), the first one written
        op.execute("INSERT INTO usage_plain SELECT DISTINCT ON (request_id) * FROM usage ORDER BY request_id, seq")
        op.execute("DROP TABLE usage")  # and its partitions
        op.execute("ALTER TABLE usage_plain RENAME TO usage")
        op.execute("ALTER TABLE usage ADD CONSTRAINT usage_pkey PRIMARY KEY (seq)")
        op.execute("CREATE UNIQUE INDEX ux_usage_request_id ON usage (request_id)")
        op.execute("CREATE INDEX ix_usage_ts ON usage (ts)")
    op.drop_table("leases")
