"""The agent APIs (issue 24): usage records name the client API that carried them, and the Responses
API's stored responses (agent memory) live in the store, sealed per identity, until they expire.

``usage.api``: ``chat``, ``messages``, ``responses``, ``completions`` or ``embeddings`` (NULL on rows
written before this revision); ``usage.cache_creation_tokens``: prompt tokens written to the upstream's
cache (Anthropic's cache creation), which are priced apart from the rest of the prompt. ``stored_responses``: one row per ``store: true`` response; ``sealed``
holds its request, input items and answer, AES-GCM under a key derived from the pepper and the
identity, bound to the row's id; ``previous_id`` links a chain, read back in one recursive query.

The MCP gateway (issue 25): a tool call's decision row also says how the call went (``latency_ms``,
``result_bytes``, ``upstream_status``, the result as the detectors masked it, ``result_masked``) and
which model tool call proposed it (``tool_call_id``);
``mcp_ended_sessions`` lists sessions ended by a DELETE (by the digest of their id) until they would
have expired anyway, so every replica refuses them.

Revision ID: 0014
Revises: 0013
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage") as batch:
        batch.add_column(sa.Column("api", sa.String(16)))
        batch.add_column(sa.Column("cache_creation_tokens", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "stored_responses",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("identity_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("previous_id", sa.String(64)),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("sealed", sa.Text, nullable=False),
    )
    op.create_index("ix_stored_responses_identity", "stored_responses", ["identity_id"])
    op.create_index("ix_stored_responses_expires", "stored_responses", ["expires_at"])
    with op.batch_alter_table("tool_decisions") as batch:
        batch.add_column(sa.Column("latency_ms", sa.Float))
        batch.add_column(sa.Column("result_bytes", sa.Integer))
        batch.add_column(sa.Column("upstream_status", sa.String(32)))
        batch.add_column(sa.Column("tool_call_id", sa.String(128)))
        batch.add_column(sa.Column("result_masked", sa.Text))
    op.create_table(
        "mcp_ended_sessions",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("ended_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_index("ix_mcp_ended_sessions_expires", "mcp_ended_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_mcp_ended_sessions_expires", "mcp_ended_sessions")
    op.drop_table("mcp_ended_sessions")
    with op.batch_alter_table("tool_decisions") as batch:
        for name in ("result_masked", "tool_call_id", "upstream_status", "result_bytes", "latency_ms"):
            batch.drop_column(name)
    op.drop_index("ix_stored_responses_expires", "stored_responses")
    op.drop_index("ix_stored_responses_identity", "stored_responses")
    op.drop_table("stored_responses")
    with op.batch_alter_table("usage") as batch:
        batch.drop_column("cache_creation_tokens")
        batch.drop_column("api")
