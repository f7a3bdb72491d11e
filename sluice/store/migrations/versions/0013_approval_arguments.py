"""Tool approvals keep their canonical arguments, sealed, for the approver to read whole (issue 23).

``args_sealed`` is the canonical JSON the approval binds to, AES-GCM sealed under a key derived
from the pepper (NULL when it is longer than an approver can be shown, and then it cannot be
approved); ``args_chars`` its length. The index serves the count of an identity's pending
approvals that every hold checks against ``guardrails.approvals.max_pending_per_identity``.

Revision ID: 0013
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tool_approvals") as batch:
        batch.add_column(sa.Column("args_sealed", sa.Text))
        batch.add_column(sa.Column("args_chars", sa.Integer))
    op.create_index("ix_tool_approvals_identity", "tool_approvals", ["identity_id", "status", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_tool_approvals_identity", "tool_approvals")
    with op.batch_alter_table("tool_approvals") as batch:
        for name in ("args_chars", "args_sealed"):
            batch.drop_column(name)
