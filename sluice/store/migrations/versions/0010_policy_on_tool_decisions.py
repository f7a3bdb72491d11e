"""Tool decisions cite the policy version (number and hash) whose tool registry made them (issue 11).

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tool_decisions") as batch:
        batch.add_column(sa.Column("policy_version", sa.Integer))
        batch.add_column(sa.Column("policy_hash", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("tool_decisions") as batch:
        for name in ("policy_hash", "policy_version"):
            batch.drop_column(name)
