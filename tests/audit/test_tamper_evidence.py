"""`verify` recomputes the log from the database and names the exact entry a direct edit of the
database altered, deleted, inserted or reordered (SQLite and Postgres); signed checkpoints expose a
truncated tail and a log rewritten whole; a checkpoint signed by another key is refused; an entry
that cannot be written takes its change down with it; two replicas appending at once never fork."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from sqlalchemy import text

from sluice.audit import AuditLog, MerkleJournal, Signer, entry, merkle
from sluice.core.audit_settings import Audit
from sluice.core.types import ChangeEvent, Identity
from sluice.store import StoreUnavailable, Writes
from sluice.store.sql import SqlStore
from store.pg_databases import drop_pg_database, fresh_pg_database

ORIGIN = "test.sluice/audit"
N = 10


def _event(action: str, target: str) -> ChangeEvent:
    return ChangeEvent(id=uuid.uuid4().hex, ts=time.time(), actor="alice", action=action, target=target,
                       source_ip="10.0.0.7", detail={"n": target})


def _ident(name: str) -> Identity:
    return Identity(id=f"id-{name}", name=name, owner="o@example.com", created_at=time.time())


async def _open(url: str) -> SqlStore:
    s = SqlStore(url)
    s.journal = MerkleJournal()
    await s.open()
    return s


@pytest.fixture(params=["sqlite", "postgres"])
async def url(request, tmp_path):
    u = f"sqlite:///{tmp_path}/store.db" if request.param == "sqlite" else await fresh_pg_database()
    yield u
    if request.param == "postgres":
        await drop_pg_database(u)


@pytest.fixture
async def log(url):
    store = await _open(url)
    for i in range(N - 2):
        name = f"user{i}"
        await store.apply(Writes().put_identity(_ident(name)), _event("identity.create", f"id-{name}"))
    await store.record_change(_event("limits.replace", "limits"))
    await store.record_audit(_event("login.failed", "/admin/whoami"))
    yield AuditLog(store, Audit(origin=ORIGIN), Signer.generate(ORIGIN))
    await store.close()


async def _sql(log: AuditLog, *statements: tuple[str, dict]) -> None:
    async with log._store.engine.begin() as conn:
        for sql, params in statements:
            await conn.execute(text(sql), params)


async def _rows(log: AuditLog) -> list[tuple[int, str, str]]:
    async with log._store.engine.connect() as conn:
        return [tuple(r) for r in await conn.execute(text("SELECT seq, entry, root FROM audit_log ORDER BY seq"))]


async def test_a_clean_log_verifies_with_dense_sequence_and_every_change_audited(log):
    report = await log.verify()
    assert report.ok, report.as_dict()
    assert report.size == N
    rows = await _rows(log)
    assert [r[0] for r in rows] == list(range(N))
    e = entry.decode(rows[0][1].encode())
    assert e["actor"] == "alice" and e["action"] == "identity.create" and e["source"] == "10.0.0.7"
    assert e["before"] == entry.digest({"identities": []}) and e["after"] != e["before"]  # nothing there before, a row after
    assert entry.decode(rows[-1][1].encode())["change_id"] is None  # the failed login has no change
    assert rows[-1][2] == (await log.head())[1].hex() == report.root.hex()


async def test_an_edited_entry_is_named(log):
    rows = await _rows(log)
    await _sql(log, ("UPDATE audit_log SET entry = :e WHERE seq = 3", {"e": rows[3][1].replace("10.0.0.7", "10.6.6.6")}))
    report = await log.verify()  # a field the change log does not repeat: only the recorded tree head tells
    assert (report.first.seq, report.first.kind) == (3, "altered"), report.as_dict()
    await _sql(log, ("UPDATE audit_log SET entry = :e WHERE seq = 3", {"e": rows[3][1].replace("alice", "mallory")}))
    report = await log.verify()
    assert (report.first.seq, report.first.kind) == (3, "altered"), report.as_dict()


async def test_a_deleted_entry_is_named_with_or_without_renumbering(log):
    await _sql(log, ("DELETE FROM audit_log WHERE seq = 4", {}))
    report = await log.verify()
    assert (report.first.seq, report.first.kind) == (4, "deleted"), report.as_dict()
    await _sql(log, *[("UPDATE audit_log SET seq = :s WHERE seq = :o", {"s": s - 1, "o": s}) for s in range(5, N)])
    report = await log.verify()
    assert (report.first.seq, report.first.kind) == (4, "deleted"), report.as_dict()


async def test_an_inserted_entry_is_named_even_with_a_correct_tree_head(log):
    rows = await _rows(log)
    forged = entry.build(4, _event("key.issue", "key-forged"), before=None, after=None, request_id=None, change_id=None)
    leaves = [merkle.leaf_hash(r[1].encode()) for r in rows[:4]] + [merkle.leaf_hash(forged)]
    shift = [("UPDATE audit_log SET seq = :s WHERE seq = :o", {"s": s + 1, "o": s}) for s in range(N - 1, 3, -1)]
    await _sql(log, *shift, ("INSERT INTO audit_log (seq, entry, root, ts) VALUES (4, :e, :r, 0)",
                             {"e": forged.decode(), "r": merkle.root(leaves).hex()}))
    report = await log.verify()
    assert (report.first.seq, report.first.kind) == (4, "inserted"), report.as_dict()


async def test_swapped_entries_are_named_as_reordered(log):
    rows = await _rows(log)
    await _sql(log, ("UPDATE audit_log SET entry = :e, root = :r WHERE seq = 2", {"e": rows[3][1], "r": rows[3][2]}),
               ("UPDATE audit_log SET entry = :e, root = :r WHERE seq = 3", {"e": rows[2][1], "r": rows[2][2]}))
    report = await log.verify()
    assert (report.first.seq, report.first.kind) == (2, "reordered"), report.as_dict()


async def test_a_truncated_tail_is_caught_by_the_head_and_by_an_earlier_checkpoint(log):
    cp = await log.checkpoint()
    assert cp.size == N
    cut = [entry.decode(r[1].encode())["change_id"] for r in (await _rows(log))[N - 2:]]
    await _sql(log, ("DELETE FROM audit_log WHERE seq >= :n", {"n": N - 2}), ("DELETE FROM audit_checkpoints", {}),
               *[("DELETE FROM changes WHERE id = :i", {"i": c}) for c in cut if c])
    report = await log.verify()  # the append head still counts them
    assert (report.first.seq, report.first.kind) == (N - 2, "truncated"), report.as_dict()
    # the attacker also rewinds the append head: the exported checkpoint remains
    rows = await _rows(log)
    frontier: list[bytes] = []
    for i, r in enumerate(rows):
        merkle.append(frontier, i, merkle.leaf_hash(r[1].encode()))
    await _sql(log, ("UPDATE audit_head SET size = :n, frontier = :f WHERE id = 1",
                     {"n": N - 2, "f": json.dumps([h.hex() for h in frontier])}))
    assert (await log.verify()).ok
    report = await log.verify([cp.note])
    assert (report.first.seq, report.first.kind) == (N - 2, "truncated"), report.as_dict()


async def test_a_log_rewritten_whole_fails_its_checkpoint(log):
    assert (await log.checkpoint()).size == N
    rows = await _rows(log)
    data = [r[1].encode() for r in rows]
    data[1] = data[1].replace(b"10.0.0.7", b"10.6.6.6")  # a field the change log does not repeat
    leaves = [merkle.leaf_hash(d) for d in data]
    await _sql(log, *[("UPDATE audit_log SET entry = :e, root = :r WHERE seq = :s",
                       {"e": d.decode(), "r": merkle.root(leaves[:i + 1]).hex(), "s": i}) for i, d in enumerate(data)])
    report = await log.verify()
    assert not report.ok and report.first.kind == "altered" and report.first.seq == N - 1, report.as_dict()


async def test_a_checkpoint_signed_by_another_key_is_refused(log):
    size, root = await log.head()
    from sluice.audit.note import sign_checkpoint

    forged = sign_checkpoint(Signer.generate(ORIGIN), ORIGIN, size, root)  # same name, other key
    report = await log.verify([forged.note])
    assert report.first.kind == "checkpoint" and "another key" in report.first.message, report.as_dict()
    genuine = (await log.checkpoint()).note
    body, _, sig = genuine.partition("\n\n")
    tampered = body.replace(f"\n{size}\n", f"\n{size + 5}\n") + "\n\n" + sig  # a real signature over other text
    report = await log.verify([tampered])
    assert report.first.kind == "checkpoint" and "forged" in report.first.message, report.as_dict()


async def test_a_change_whose_entry_cannot_be_written_is_not_written(log):
    store = log._store
    await _sql(log, ("DELETE FROM audit_head", {}))  # the append head is gone: no entry can be written
    with pytest.raises(StoreUnavailable):
        await store.apply(Writes().put_identity(_ident("ghost")), _event("identity.create", "id-ghost"))
    with pytest.raises(StoreUnavailable):
        await store.record_change(_event("limits.replace", "limits"))
    assert await store.get_identity("id-ghost") is None
    assert len(await store.list_changes()) == N - 1


async def test_a_change_removed_from_the_change_log_or_added_to_it_is_reported(log):
    changes = await log._store.list_changes()
    await _sql(log, ("DELETE FROM changes WHERE id = :i", {"i": changes[0].id}))
    report = await log.verify()
    assert any(p.kind == "inserted" and changes[0].id in p.message for p in report.problems), report.as_dict()
    await _sql(log, ("INSERT INTO changes (id, ts, actor, action, target, detail) VALUES ('x1', 0, 'm', 'key.issue', 'k', '{}')", {}))
    report = await log.verify()
    assert any(p.kind == "unaudited" and "x1" in p.message for p in report.problems), report.as_dict()


async def test_two_replicas_appending_at_once_do_not_fork_the_log(url):
    stores = [await _open(url), await _open(url)]
    try:
        async def burst(s: SqlStore, tag: str) -> None:
            await asyncio.gather(*(s.apply(Writes().put_identity(_ident(f"{tag}{i}")), _event("identity.create", f"{tag}{i}"))
                                   for i in range(15)))
        await asyncio.gather(burst(stores[0], "a"), burst(stores[1], "b"))
        log = AuditLog(stores[0], Audit(origin=ORIGIN), None)
        report = await log.verify()
        assert report.ok and report.size == 30, report.as_dict()
    finally:
        for s in stores:
            await s.close()
