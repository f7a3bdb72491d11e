"""Alembic environment: runs on the connection the store hands over (no ini file, no URL here)."""

from __future__ import annotations

from alembic import context

from sluice.store.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
