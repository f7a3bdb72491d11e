"""The Batch API's gaps (issue 27 item 5): files that expire, and a batch's summed token usage.

``batch_files.expires_at``: when a file goes (an upload's ``expires_after``, a batch's output and error files
``batches.file_retention_days`` after they were written; NULL keeps it); an expired file is answered as a
missing one and its rows are purged by one replica under a lease. ``batches.usage``: the token usage of a
finished batch (OpenAI's ``usage`` of the batch object), summed once at finalize.

Revision ID: 0021
Revises: 0020
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_files") as t:
        t.add_column(sa.Column("expires_at", sa.Float))
    op.create_index("ix_batch_files_expires", "batch_files", ["expires_at"])
    with op.batch_alter_table("batches") as t:
        t.add_column(sa.Column("usage", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("batches") as t:
        t.drop_column("usage")
    op.drop_index("ix_batch_files_expires", table_name="batch_files")
    with op.batch_alter_table("batch_files") as t:
        t.drop_column("expires_at")
