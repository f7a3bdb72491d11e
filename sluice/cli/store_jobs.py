"""A maintenance job against the configured store (the purges a cron runs): open it, run, close."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from ..core import config as cfgmod

T = TypeVar("T")


def on_store(config: Path, job: Callable[[Any], Awaitable[T]]) -> T:
    """``job(store)`` against the store the gateway's config names (migrated to the newest schema first)."""
    c = cfgmod.load(config)

    async def run() -> T:
        from ..store import open_store

        store = open_store(c.store.url)
        await store.open()
        try:
            return await job(store)
        finally:
            await store.close()

    return asyncio.run(run())
