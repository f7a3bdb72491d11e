"""Guardrail records behave the same on SQLite and Postgres: an approval is decided once, redeemed once
(even by two replicas at the same moment), only with its arguments, only before it expires; each decision
and redemption lands with its change record, audit entry and tool decision, or not at all; an identity's
pending approvals are capped across replicas."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text

from sluice.audit import AuditLog, MerkleJournal
from sluice.core.audit_settings import Audit
from sluice.core.types import ChangeEvent
from sluice.store import StoreUnavailable
from sluice.store.guard_records import GuardRecords
from sluice.store.sql import SqlStore


@pytest.fixture()
async def records(store_url: str) -> AsyncIterator[tuple[GuardRecords, GuardRecords]]:
    """Two stores on one database: two replicas, each appending audit entries as the gateway's do."""
    a, b = SqlStore(store_url), SqlStore(store_url)
    a.journal, b.journal = MerkleJournal(), MerkleJournal()
    await a.open()
    await b.open()
    try:
        yield GuardRecords(a), GuardRecords(b)
    finally:
        await a.close()
        await b.close()


def approval(n: str, ttl: float = 60.0, identity: str = "id-1") -> dict:
    now = time.time()
    return {"id": n, "created_at": now, "expires_at": now + ttl, "status": "pending", "identity_id": identity,
            "identity_name": "agent", "request_id": "req-1", "model": "m", "context_digest": "c" * 64,
            "tool": "transfer_funds", "call_id": "call-1", "args_sha256": "a" * 64, "args_masked": "{}"}


def change(action: str, target: str) -> dict:
    """The keyword arguments of a decision or redemption: its change record and its tool decision."""
    ev = ChangeEvent(id=uuid.uuid4().hex, ts=time.time(), actor="approver", action=action, target=target)
    return {"change": ev, "record": {"ts": ev.ts, "request_id": "req-1", "tool": "transfer_funds",
                                     "decision": action.rsplit(".", 1)[1], "reason": "test", "approval_id": target}}


async def test_an_approval_is_decided_once_and_redeemed_once_across_replicas(records) -> None:
    one, two = records
    await one.create_approval(approval("apv-1"))
    now = time.time()
    assert not await two.redeem("apv-1", "id-1", "a" * 64, now, **change("tool_approval.redeem", "apv-1"))  # pending
    assert await two.decide("apv-1", True, "approver", now, **change("tool_approval.approve", "apv-1"))
    assert not await one.decide("apv-1", False, "someone-else", now, **change("tool_approval.deny", "apv-1"))  # decided
    assert not await one.redeem("apv-1", "id-2", "a" * 64, now, **change("tool_approval.redeem", "apv-1"))  # another identity
    assert not await one.redeem("apv-1", "id-1", "b" * 64, now, **change("tool_approval.redeem", "apv-1"))  # other arguments
    wins = await asyncio.gather(*(r.redeem("apv-1", "id-1", "a" * 64, time.time(), **change("tool_approval.redeem", "apv-1"))
                                  for r in (one, two) for _ in range(4)))
    assert wins.count(True) == 1
    row = await two.get_approval("apv-1")
    assert row["status"] == "used" and row["decided_by"] == "approver"


async def test_an_expired_approval_is_neither_decided_nor_redeemed(records) -> None:
    one, _ = records
    await one.create_approval(approval("apv-2", ttl=-1.0))
    assert not await one.decide("apv-2", True, "approver", time.time(), **change("tool_approval.approve", "apv-2"))
    # 5 s to decide it (0.5 s ran out between the two calls on a loaded machine), redeemed as of 10 s later
    await one.create_approval(approval("apv-3", ttl=5.0))
    assert await one.decide("apv-3", True, "approver", time.time(), **change("tool_approval.approve", "apv-3"))
    assert not await one.redeem("apv-3", "id-1", "a" * 64, time.time() + 10.0, **change("tool_approval.redeem", "apv-3"))


async def test_each_decision_and_redemption_lands_with_its_change_record_audit_entry_and_tool_decision_or_not_at_all(
        records) -> None:
    one, two = records
    store = one._store
    version = await store.identity_version()
    await one.create_approval(approval("apv-4"))
    assert await one.decide("apv-4", True, "approver", time.time(), **change("tool_approval.approve", "apv-4"))
    assert await two.redeem("apv-4", "id-1", "a" * 64, time.time(), **change("tool_approval.redeem", "apv-4"))
    # a transition that finds the approval moved on writes nothing: no change, no entry, no decision
    assert not await two.decide("apv-4", False, "approver", time.time(), **change("tool_approval.deny", "apv-4"))
    assert [(c.action, c.target) for c in await store.list_changes()] == [("tool_approval.redeem", "apv-4"),
                                                                         ("tool_approval.approve", "apv-4")]
    assert [d["decision"] for d in await one.list_decisions()] == ["redeem", "approve"]
    report = await AuditLog(store, Audit(origin="test.sluice/audit"), None).verify()
    assert report.ok and report.size == 2, report.as_dict()  # one entry per change, each citing it
    assert await store.identity_version() == version  # nothing any replica caches: no reload everywhere
    # fail closed: a decision whose audit entry cannot be written is not made
    await one.create_approval(approval("apv-5"))
    async with store.engine.begin() as conn:
        await conn.execute(text("DELETE FROM audit_head"))
    with pytest.raises(StoreUnavailable):
        await one.decide("apv-5", True, "approver", time.time(), **change("tool_approval.approve", "apv-5"))
    assert (await one.get_approval("apv-5"))["status"] == "pending"
    assert len(await store.list_changes()) == 2 and len(await one.list_decisions()) == 2


async def test_pending_approvals_per_identity_are_capped_across_replicas(records) -> None:
    one, two = records
    await one.create_approval(approval("old", ttl=-1.0), 5)  # expired: it no longer counts
    waits = await asyncio.gather(*(r.create_approval(approval(f"c-{i}-{j}", ttl=300.0), 5)
                                   for j, r in enumerate((one, two)) for i in range(8)))
    assert waits.count(None) == 5  # two replicas, 16 holds at once: exactly the cap got in
    # until the first of them expires: about the 300 s they live (each row's time is taken as it is built)
    assert all(280.0 < w < 301.0 for w in waits if w is not None), waits
    assert await one.create_approval(approval("other", identity="id-2"), 5) is None  # per identity
    pending = [r for r in await two.list_approvals("pending", 100) if r["identity_id"] == "id-1"]
    assert len(pending) == 6  # the five, and the expired one (listed as expired by the API)
    first = next(r["id"] for r in pending if r["id"].startswith("c-"))
    assert await one.decide(first, False, "approver", time.time(), **change("tool_approval.deny", first))
    assert await two.create_approval(approval("after"), 5) is None  # a decision frees a place
    assert await two.create_approval(approval("over"), 5) is not None


async def test_decision_rows_of_a_batch_land_whole_each_column_it_leaves_out_null(records) -> None:
    one, two = records
    mcp_row = {"ts": time.time(), "request_id": "req-mcp", "identity_id": "id-1", "model": "mcp:files",
               "context_digest": "d" * 64, "tool": "files__get_weather", "call_id": "", "decision": "allow",
               "reason": "allowed", "args_masked": '{"city":"Oslo"}', "args_sha256": "e" * 64, "approval_id": None,
               "approver": None, "policy_version": 3, "policy_hash": "f" * 64, "latency_ms": 1.25, "result_bytes": 42,
               "upstream_status": "ok", "tool_call_id": "call_7", "result_masked": '{"content":[]}'}
    model_row = {"ts": time.time(), "request_id": "req-model", "tool": "get_weather", "decision": "block",
                 "reason": "not granted"}  # the model path's rows leave the MCP columns out
    await one.record_decisions([mcp_row, model_row])
    got = {d["request_id"]: d for d in await two.list_decisions()}
    assert {k: v for k, v in got["req-mcp"].items() if k != "seq"} == mcp_row
    assert got["req-model"]["latency_ms"] is None and got["req-model"]["upstream_status"] is None
    assert got["req-model"]["decision"] == "block" and got["req-mcp"]["seq"] < got["req-model"]["seq"]
