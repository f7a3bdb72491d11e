"""Fresh Postgres databases for tests; in CI a missing Postgres fails instead of skipping."""

from __future__ import annotations

import os
import uuid

import asyncpg
import pytest

PG_ADMIN = os.environ.get("SLUICE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI") == "true"


async def fresh_pg_database() -> str:
    """A new, uniquely named database; its URL."""
    name = f"sluice_test_{uuid.uuid4().hex[:12]}"
    try:
        conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if IN_CI:
            pytest.fail(f"Postgres is required in CI and unreachable: {exc}")
        pytest.skip(f"Postgres unreachable: {exc}")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


async def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()




async def scratch_store(kind: str, directory):
    """An opened ``SqlStore`` (migrated) on a file under ``directory`` (``sqlite``) or a fresh database
    (``postgres``), closed and the database dropped afterwards: ``async for store in scratch_store(...)``."""
    from sluice.store.sql import SqlStore

    url = f"sqlite:///{directory}/store.db" if kind == "sqlite" else await fresh_pg_database()
    s = SqlStore(url)
    await s.open()
    try:
        yield s
    finally:
        await s.close()
        if kind == "postgres":
            await drop_pg_database(url)
