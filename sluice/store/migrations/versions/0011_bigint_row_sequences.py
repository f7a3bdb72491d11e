"""Row sequence numbers are 64-bit on Postgres.

``usage.seq`` was a 32-bit ``serial``: one row per request runs it out after 2,147,483,647
requests (under three days at 10,000 req/s), and every usage write then fails. The same for the
other per-event tables (changes, policy change sets, tool decisions, prompt captures). On SQLite
an ``INTEGER PRIMARY KEY`` is the 64-bit rowid already, so this is Postgres only. The column and
its sequence both widen (a Postgres 10+ sequence has its own type and maximum).

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

TABLES = ("usage", "changes", "policy_changesets", "tool_decisions", "prompt_captures")


def _alter(kind: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ALTER COLUMN seq TYPE {kind}")
        op.execute(f"DO $$ BEGIN EXECUTE format('ALTER SEQUENCE %s AS {kind}', pg_get_serial_sequence('{table}', 'seq')); END $$")


def upgrade() -> None:
    _alter("bigint")


def downgrade() -> None:
    _alter("integer")
