"""Store fixtures: the same contract runs on SQLite and on a real Postgres database."""

from __future__ import annotations

import pytest

from pg_databases import drop_pg_database, fresh_pg_database


@pytest.fixture(params=["sqlite", "postgres"])
async def store_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/store.db"
        return
    url = await fresh_pg_database()
    yield url
    await drop_pg_database(url)
