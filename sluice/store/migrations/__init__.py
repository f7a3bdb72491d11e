"""Alembic migrations of the store schema, run by the store at start."""
