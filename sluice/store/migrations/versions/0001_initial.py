"""Initial schema: identities, api_keys, usage, changes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identities",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("environment", sa.String(16), nullable=False),
        sa.Column("models", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("disabled_at", sa.Float),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("identity_id", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("display", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("expires_at", sa.Float),
        sa.Column("revoked_at", sa.Float),
        sa.Column("last_used_at", sa.Float),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_api_keys_identity_id", "api_keys", ["identity_id"])
    op.create_table(
        "usage",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("identity_id", sa.String(64)),
        sa.Column("key_id", sa.String(64)),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256)),
        sa.Column("upstream", sa.String(128)),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("prompt_tokens", sa.Integer, nullable=False),
        sa.Column("completion_tokens", sa.Integer, nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=False),
        sa.Column("ttft_ms", sa.Float),
        sa.Column("upstream_ms", sa.Float),
        sa.Column("stream", sa.Boolean, nullable=False),
        sa.Column("usage_source", sa.String(16), nullable=False),
        sa.Column("error_code", sa.String(64)),
    )
    op.create_index("ix_usage_ts", "usage", ["ts"])
    op.create_index("ix_usage_identity_ts", "usage", ["identity_id", "ts"])
    op.create_table(
        "changes",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("ts", sa.Float, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(128), nullable=False),
        sa.Column("source_ip", sa.String(64)),
        sa.Column("detail", sa.Text, nullable=False),
    )
    op.create_index("ix_changes_ts", "changes", ["ts"])


def downgrade() -> None:
    for table in ("changes", "usage", "api_keys", "identities"):
        op.drop_table(table)
