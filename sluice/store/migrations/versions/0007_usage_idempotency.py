"""The usage idempotency key: one row per request id, so a batch written twice (a retry after
a lost commit acknowledgement, a spill file replayed after a crash) is not counted twice.
Writers insert with ON CONFLICT DO NOTHING on it.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # request ids were already unique per process run; drop any accidental repeat so the index builds
    op.execute("DELETE FROM usage WHERE seq NOT IN (SELECT min(seq) FROM usage GROUP BY request_id)")
    op.create_index("ux_usage_request_id", "usage", ["request_id"], unique=True)


def downgrade() -> None:
    op.drop_index("ux_usage_request_id", table_name="usage")
