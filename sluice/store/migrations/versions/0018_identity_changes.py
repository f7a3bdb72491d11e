"""Incremental registry reloads (issue 29, item 5): which identities, keys and teams each identity-state
version changed, so a replica holding version V reads only what moved since V instead of every identity.

``identity_changes``: one row per (version, kind, entity) written in the transaction that bumps the version;
kind ``identity`` (an id), ``key`` (a key id), ``team`` (a name), ``none`` (a version that changed no
identity, key or team: a policy change), ``all`` (a write a replica cannot patch: reload whole). Rows older
than a day are deleted as versions are bumped; a replica whose version is older than what is kept reloads whole.

Revision ID: 0018
Revises: 0017
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "identity_changes",
        sa.Column("version", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("kind", sa.String(16), primary_key=True),
        sa.Column("entity_id", sa.String(256), primary_key=True),
        sa.Column("ts", sa.Float, nullable=False),
    )
    op.create_index("ix_identity_changes_ts", "identity_changes", ["ts"])


def downgrade() -> None:
    op.drop_index("ix_identity_changes_ts", table_name="identity_changes")
    op.drop_table("identity_changes")
