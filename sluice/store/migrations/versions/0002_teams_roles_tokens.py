"""Teams, roles per identity, the plane of a key, token-signing keys.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(256), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("private_sealed", sa.Text, nullable=False),
        sa.Column("public_jwk", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("retire_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    with op.batch_alter_table("identities") as batch:
        batch.add_column(sa.Column("team", sa.String(128)))
        batch.add_column(sa.Column("roles", sa.Text, nullable=False, server_default='["invoker"]'))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("plane", sa.String(16), nullable=False, server_default="data"))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("plane")
    with op.batch_alter_table("identities") as batch:
        batch.drop_column("roles")
        batch.drop_column("team")
    op.drop_table("signing_keys")
    op.drop_table("teams")
