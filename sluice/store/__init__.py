"""Persistence behind one interface (``Store``): SQLite embedded, Postgres distributed."""

from .base import Store, StoreUnavailable

__all__ = ["Store", "StoreUnavailable", "open_store"]


def open_store(url: str) -> Store:
    """Build the store for a URL (``sqlite:///path`` or ``postgresql://...``); call ``open()`` next."""
    from .sql import SqlStore

    return SqlStore(url)
