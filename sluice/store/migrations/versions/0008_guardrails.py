"""Guardrails: tool-call approvals, tool decisions, masked prompt captures.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tool_approvals",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("identity_id", sa.String(64), nullable=False),
        sa.Column("identity_name", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("context_digest", sa.String(64), nullable=False),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("call_id", sa.String(128), nullable=False),
        sa.Column("args_sha256", sa.String(64), nullable=False),
        sa.Column("args_masked", sa.Text, nullable=False),
        sa.Column("decided_by", sa.String(128)),
        sa.Column("decided_at", sa.Float),
        sa.Column("used_at", sa.Float),
    )
    op.create_index("ix_tool_approvals_status", "tool_approvals", ["status", "created_at"])
    op.create_table(
        "tool_decisions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("identity_id", sa.String(64)),
        sa.Column("model", sa.String(256)),
        sa.Column("context_digest", sa.String(64)),
        sa.Column("tool", sa.String(64), nullable=False),
        sa.Column("call_id", sa.String(128)),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("args_masked", sa.Text),
        sa.Column("args_sha256", sa.String(64)),
        sa.Column("approval_id", sa.String(64)),
        sa.Column("approver", sa.String(128)),
    )
    op.create_table(
        "prompt_captures",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("ts", sa.Float, nullable=False, index=True),
        sa.Column("expires_at", sa.Float, nullable=False, index=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("identity_id", sa.String(64)),
        sa.Column("model", sa.String(256)),
        sa.Column("text", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("prompt_captures")
    op.drop_table("tool_decisions")
    op.drop_index("ix_tool_approvals_status", "tool_approvals")
    op.drop_table("tool_approvals")
