"""Persistence behind one interface (``Store``): SQLite embedded, Postgres distributed."""

from .base import Store, StoreUnavailable, Subscription, Writes

__all__ = ["Store", "StoreUnavailable", "Subscription", "Writes", "open_store"]


def open_store(url: str) -> Store:
    """Build the store for a URL (``sqlite:///path`` or ``postgresql://...``); call ``open()`` next."""
    from .sql import SqlStore

    return SqlStore(url)
