"""Versioned policy: immutable versions, one active pointer, change sets awaiting approval.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_versions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("parent", sa.Integer),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("document", sa.Text, nullable=False),
    )
    active = op.create_table(
        "policy_active",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.bulk_insert(active, [{"id": 1, "version": 0, "updated_at": 0.0}])
    op.create_table(
        "policy_changesets",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("base", sa.Integer, nullable=False),
        sa.Column("author", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("sections", sa.Text, nullable=False),
        sa.Column("needs_approval", sa.Boolean, nullable=False),
        sa.Column("document", sa.Text, nullable=False),
        sa.Column("decided_by", sa.String(128)),
        sa.Column("decided_at", sa.Float),
        sa.Column("decision_reason", sa.Text),
        sa.Column("version", sa.Integer),
    )


def downgrade() -> None:
    op.drop_table("policy_changesets")
    op.drop_table("policy_active")
    op.drop_table("policy_versions")
