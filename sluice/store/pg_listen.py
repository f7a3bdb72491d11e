"""Postgres pushes of committed identity changes: a dedicated asyncpg connection LISTENing on the channel the
store's writes NOTIFY (``CHANNEL``), so replicas learn of a revocation without waiting for their poll."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from .base import StoreUnavailable, Subscription

CHANNEL = "sluice_identity"  # pg NOTIFY channel: an identity change was committed


async def listen(dsn: str, timeout: float, on_change: Callable[[], None]) -> Subscription:
    """A subscription calling ``on_change`` on every notification; ``StoreUnavailable`` if it cannot connect."""
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        await conn.add_listener(CHANNEL, lambda *_: on_change())
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        raise StoreUnavailable(f"store unavailable: {type(exc).__name__}") from None
    return _PgSubscription(conn)


class _PgSubscription(Subscription):
    """A dedicated asyncpg connection LISTENing on the identity channel."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    def alive(self) -> bool:
        return not self._conn.is_closed()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._conn.close(), 2.0)
        except Exception:  # closing a dead connection: nothing left to release
            self._conn.terminate()
