"""Bringing a store's schema to head at start: Alembic's upgrade under a lock, so replicas starting together
migrate once, and within its own bound rather than the request path's store timeout (a migration may read
the whole ledger once, as 0015's rollup backfill does, and a replica waits here while another migrates)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x51_1C_E0  # pg advisory lock id: replicas starting together migrate once
MIGRATE_TIMEOUT_S = 3600.0  # a start's migration, whole


async def migrated(engine: AsyncEngine, postgres: bool) -> None:
    """Upgrade to head in one transaction (on Postgres under the advisory lock)."""
    async with engine.begin() as conn:
        if postgres:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK})
        await conn.run_sync(_upgrade)


def _upgrade(connection: Any) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")
