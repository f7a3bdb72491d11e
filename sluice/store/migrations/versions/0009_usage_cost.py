"""Cost and chargeback on usage records: team, route, model version, cached prompt tokens and
the cost in integer nano-units (sums of integers are exact; float sums are not).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("team", sa.String(128)))
        batch.add_column(sa.Column("route", sa.String(128)))
        batch.add_column(sa.Column("version", sa.String(128)))
        batch.add_column(sa.Column("cached_tokens", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("cost_nanos", sa.BigInteger, nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        for name in ("cost_nanos", "cached_tokens", "version", "route", "team"):
            batch.drop_column(name)
