"""The identity-state version: bumped in the same transaction as every identity, key, role
or team change, so replicas can tell cheaply that their in-memory registry is stale. And a
change-log target as wide as the owner names it may hold (offboarding records the owner).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    state = op.create_table(
        "identity_state",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "version": 1}])
    with op.batch_alter_table("changes") as batch:
        batch.alter_column("target", type_=sa.String(256), existing_type=sa.String(128), existing_nullable=False)


def downgrade() -> None:
    op.drop_table("identity_state")
