"""MCP sessions ended by a DELETE are refused by every replica (the end is in the store), recorded once
when two replicas end one at the same moment, and forgotten once they would have expired anyway."""

from __future__ import annotations

import asyncio
import time

from sluice.store.mcp_sessions import EndedSessions
from sluice.store.sql import SqlStore


async def test_an_ended_session_is_ended_on_every_replica_and_purged_after_its_expiry(store_url: str) -> None:
    a, b = SqlStore(store_url), SqlStore(store_url)
    await a.open()
    await b.open()
    try:
        one, two = EndedSessions(a), EndedSessions(b)
        assert not await two.ended("d" * 64)
        await asyncio.gather(one.end("d" * 64, time.time() + 60), two.end("d" * 64, time.time() + 60))
        await one.end("e" * 64, time.time() - 1)
        assert await two.ended("d" * 64) and await one.ended("e" * 64)
        assert await two.purge() == 1
        assert await one.ended("d" * 64) and not await one.ended("e" * 64)
    finally:
        await a.close()
        await b.close()
