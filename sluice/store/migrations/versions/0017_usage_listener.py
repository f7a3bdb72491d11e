"""Isolated listeners (issue 28 item 3): each usage row names the data-plane listener that took the request.

``usage.listener``: the name of a listener of a ``data_plane`` list (``public``, ``internal``, ...); NULL on
a single unnamed listener and on rows written before this revision. Not part of the rollups' groups.

Revision ID: 0017
Revises: 0016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("listener", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("listener")
