"""Usage rollups (issue 29): the ledger summed per minute, hour and day and per group, so the summary,
chargeback, the dashboard and ``sluice usage`` read a number of rows set by the time range and the groups,
not by the requests (sluice/store/rollups.py describes the columns and the histograms' buckets).

Three tables, ``usage_minute``, ``usage_hour`` and ``usage_day``, keyed by the bucket's start (Unix
seconds) and the group (identity, team, key, model, version, route, API, status class, error code; ``''``
for none); on SQLite without a rowid. Nothing refers to ``usage``: raw rows dropped later by retention or
whole partitions leave the rollups as they are.

The upgrade backfills them from the rows already in ``usage``, 20,000 at a time in ``seq`` order, folded
by the same code the ledger's writer uses, inside the migration's transaction (replicas starting together
migrate once, under the store's migration lock): about 1 s per 100,000 rows on this machine's SQLite.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

GRAINS = ("minute", "hour", "day")
KEY = ("identity_id", "team", "key_id", "model", "version", "route", "api", "status_class", "error_code")
SUMS = ("requests", "errors", "streams", "prompt_tokens", "completion_tokens", "cached_tokens",
        "cache_creation_tokens", "cost_nanos")
BUCKETS = 62  # the histograms' buckets, each for latency (lat_NN) and time to first token (ttft_NN)
_CHUNK = 20_000


def _columns() -> list[sa.Column]:
    cols = [sa.Column("bucket", sa.BigInteger, primary_key=True, autoincrement=False)]
    cols += [sa.Column(c, sa.Integer if c == "status_class" else sa.String(256), primary_key=True) for c in KEY]
    cols += [sa.Column(c, sa.BigInteger, nullable=False) for c in SUMS]
    cols += [sa.Column("lat_min", sa.Float, nullable=False), sa.Column("lat_max", sa.Float, nullable=False),
             sa.Column("ttft_min", sa.Float), sa.Column("ttft_max", sa.Float),
             sa.Column("last_ts", sa.Float, nullable=False)]
    cols += [sa.Column(f"{h}_{i:02d}", sa.BigInteger, nullable=False) for h in ("lat", "ttft") for i in range(BUCKETS)]
    return cols


def upgrade() -> None:
    for grain in GRAINS:
        op.create_table(f"usage_{grain}", *_columns(), sqlite_with_rowid=False)
    _backfill(op.get_bind())


def _backfill(conn: sa.engine.Connection) -> None:
    """The rollups of every row already written, folded as the ledger's writer folds a batch."""
    import msgspec

    from sluice.core.types import UsageRecord
    from sluice.store import rollups

    assert rollups.BUCKETS == BUCKETS and rollups.KEY == KEY  # a later change of columns backfills in its own revision
    # the record's fields that ``usage`` has at this revision (later ones add columns, 0017's ``listener``)
    present = {c["name"] for c in sa.inspect(conn).get_columns("usage")}
    fields = tuple(f for f in UsageRecord.__struct_fields__ if f in present)
    read = sa.text(f"SELECT seq, {', '.join(fields)} FROM usage WHERE seq > :after ORDER BY seq LIMIT {_CHUNK}")
    upserts = {t: sa.text(rollups.upsert_sql(t, "named")) for t in rollups.TABLES.values()}
    after = -1
    while True:
        got = conn.execute(read, {"after": after}).fetchall()
        if not got:
            return
        after = got[-1][0]
        records = [UsageRecord(**{f: (bool(v) if f == "stream" else v) for f, v in zip(fields, row[1:])}) for row in got]
        for table, params in rollups.per_grain([msgspec.structs.astuple(r) for r in records]):
            conn.execute(upserts[table], [dict(zip(rollups.COLUMNS, p)) for p in params])


def downgrade() -> None:
    for grain in reversed(GRAINS):
        op.drop_table(f"usage_{grain}")
