"""The Batch API (issue 27 item 5): uploaded files in chunked rows, batches, and one row per line of a batch.

``batch_files``: a file's owner, purpose and size; its bytes are ``batch_file_chunks`` rows (at most 1 MiB each)
so every replica reads them from the store. ``batches``: a batch's status, window and result files.
``batch_lines``: a batch's input lines, parsed once at create, each with its result and usage record once it
has run: unique per
(batch, custom_id), a line's result is written only while it is pending, so each line is answered exactly once.

Revision ID: 0020
Revises: 0019
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("identity_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(512), nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_batch_files_identity", "batch_files", ["identity_id", "created_at"])
    op.create_table(
        "batch_file_chunks",
        sa.Column("file_id", sa.String(64), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "batches",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("identity_id", sa.String(64), nullable=False),
        sa.Column("identity_name", sa.String(256), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("in_progress_at", sa.Float),
        sa.Column("finalizing_at", sa.Float),
        sa.Column("completed_at", sa.Float),
        sa.Column("failed_at", sa.Float),
        sa.Column("expired_at", sa.Float),
        sa.Column("cancelling_at", sa.Float),
        sa.Column("cancelled_at", sa.Float),
        sa.Column("output_file_id", sa.String(64)),
        sa.Column("error_file_id", sa.String(64)),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("completed", sa.Integer, nullable=False),
        sa.Column("failed", sa.Integer, nullable=False),
        sa.Column("errors", sa.Text),
        sa.Column("metadata", sa.Text),
    )
    op.create_index("ix_batches_identity", "batches", ["identity_id", "created_at"])
    op.create_index("ix_batches_status", "batches", ["status"])
    op.create_table(
        "batch_lines",
        sa.Column("batch_id", sa.String(64), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True),
        sa.Column("custom_id", sa.String(512), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("state", sa.String(8), nullable=False),  # pending | ok | error
        sa.Column("request_id", sa.String(64)),
        sa.Column("result", sa.Text),
        sa.Column("usage", sa.Text),  # the line's usage record, written with its result (replayed idempotently)
        sa.UniqueConstraint("batch_id", "custom_id", name="ux_batch_lines_custom_id"),
    )
    op.create_index("ix_batch_lines_state", "batch_lines", ["batch_id", "state"])


def downgrade() -> None:
    op.drop_index("ix_batch_lines_state", table_name="batch_lines")
    op.drop_table("batch_lines")
    op.drop_index("ix_batches_status", table_name="batches")
    op.drop_index("ix_batches_identity", table_name="batches")
    op.drop_table("batches")
    op.drop_table("batch_file_chunks")
    op.drop_index("ix_batch_files_identity", table_name="batch_files")
    op.drop_table("batch_files")
