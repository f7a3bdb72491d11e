"""Guardrail records behave the same on SQLite and Postgres: an approval is decided once, redeemed once
(even by two replicas at the same moment), only with its arguments, only before it expires."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sluice.store.guard_records import GuardRecords
from sluice.store.sql import SqlStore


@pytest.fixture()
async def records(store_url: str) -> AsyncIterator[tuple[GuardRecords, GuardRecords]]:
    """Two stores on one database: two replicas."""
    a, b = SqlStore(store_url), SqlStore(store_url)
    await a.open()
    await b.open()
    try:
        yield GuardRecords(a), GuardRecords(b)
    finally:
        await a.close()
        await b.close()


def approval(n: str, ttl: float = 60.0) -> dict:
    now = time.time()
    return {"id": n, "created_at": now, "expires_at": now + ttl, "status": "pending", "identity_id": "id-1",
            "identity_name": "agent", "request_id": "req-1", "model": "m", "context_digest": "c" * 64,
            "tool": "transfer_funds", "call_id": "call-1", "args_sha256": "a" * 64, "args_masked": "{}"}


async def test_an_approval_is_decided_once_and_redeemed_once_across_replicas(records) -> None:
    one, two = records
    await one.create_approval(approval("apv-1"))
    now = time.time()
    assert not await two.redeem("apv-1", "id-1", "a" * 64, now)  # pending: nothing to redeem
    assert await two.decide("apv-1", True, "approver", now)
    assert not await one.decide("apv-1", False, "someone-else", now)  # decided already
    assert not await one.redeem("apv-1", "id-2", "a" * 64, now)  # another identity
    assert not await one.redeem("apv-1", "id-1", "b" * 64, now)  # other arguments
    wins = await asyncio.gather(*(r.redeem("apv-1", "id-1", "a" * 64, time.time()) for r in (one, two) for _ in range(4)))
    assert wins.count(True) == 1
    row = await two.get_approval("apv-1")
    assert row["status"] == "used" and row["decided_by"] == "approver"


async def test_an_expired_approval_is_neither_decided_nor_redeemed(records) -> None:
    one, _ = records
    await one.create_approval(approval("apv-2", ttl=-1.0))
    assert not await one.decide("apv-2", True, "approver", time.time())
    await one.create_approval(approval("apv-3", ttl=0.5))
    assert await one.decide("apv-3", True, "approver", time.time())
    assert not await one.redeem("apv-3", "id-1", "a" * 64, time.time() + 1.0)


async def test_decisions_are_listed_newest_first_and_captures_purged_after_retention(records) -> None:
    one, two = records
    rows = [{"ts": float(i), "request_id": f"r{i}", "tool": "t", "decision": "block", "reason": "tool_not_allowed"}
            for i in range(3)]
    await one.record_decisions(rows)
    assert [d["request_id"] for d in await two.list_decisions(10)] == ["r2", "r1", "r0"]
    now = time.time()
    await one.capture([{"ts": now, "expires_at": now - 1, "request_id": "old", "text": "x"},
                       {"ts": now, "expires_at": now + 3600, "request_id": "new", "text": "y"}])
    assert await two.purge_captures() == 1
    assert await two.purge_captures() == 0
