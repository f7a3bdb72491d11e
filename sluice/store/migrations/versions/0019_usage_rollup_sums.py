"""The summaries' columns of each usage rollup table beside its bucket, in an index of their own (issue 29's
acceptance: every ``by=`` of a 30-day summary under 200 ms at 100 million rows).

A rollup row is ~1.2 KB (124 histogram counts), and the rows of ``usage_day`` and ``usage_hour`` are updated by
every ledger batch, mostly not in place (16% HOT in the load of bench/usage_scale.py): a 30-day summary read
those tables whole from the heap, ~45,000 pages for 36,000 day rows (212 ms for ``by=team`` at 1 million rows;
``EXPLAIN ANALYZE`` in bench/README.md). The summary (``usage_reads.sums``) needs only the bucket, the
dimensions and six sums: ``ix_usage_<grain>_sums`` on ``(bucket) INCLUDE`` those serves it as an index-only
scan (557 buffers, 47 ms; days no longer written are all-visible once vacuumed). Postgres only: SQLite has no
``INCLUDE``, and its rollup tables are their own primary-key B-trees.

Revision ID: 0019
Revises: 0018
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

GRAINS = ("minute", "hour", "day")
# usage_reads.DIMENSIONS' columns, then usage_reads.TOTALS
INCLUDE = ("identity_id", "key_id", "team", "model", "route", "api", "version", "requests", "errors", "prompt_tokens",
           "completion_tokens", "cached_tokens", "cost_nanos")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for grain in GRAINS:
        op.execute(f"CREATE INDEX ix_usage_{grain}_sums ON usage_{grain} (bucket) INCLUDE ({', '.join(INCLUDE)})")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for grain in GRAINS:
        op.execute(f"DROP INDEX ix_usage_{grain}_sums")
