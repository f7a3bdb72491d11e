"""Writing the audit entry is part of the change: a sluice process SIGKILLed in the middle of a
burst of concurrent key issues and revocations leaves no change without its entry and no entry
without its change (SQLite and Postgres); after a restart the log verifies and keeps growing."""

from __future__ import annotations

import signal
import threading
import time

import httpx

from sluice.audit import AuditLog, MerkleJournal
from sluice.core.audit_settings import Audit
from sluice.store.sql import SqlStore
from support import Gateway, Sim, start_gateway

ORIGIN = "test.sluice/crash"




def _burst(g: Gateway, ident: str, stop: threading.Event, done: list[int]) -> None:
    with httpx.Client(base_url=g.admin_url, headers={"Authorization": f"Bearer {g.admin_key}"}, timeout=10) as c:
        while not stop.is_set():
            try:
                issued = c.post(f"/admin/identities/{ident}/keys", json={})
                if issued.status_code == 201:
                    c.post(f"/admin/keys/{issued.json()['id']}/revoke")
                done.append(1)
            except httpx.HTTPError:
                return  # the process is gone


async def _check(url: str) -> int:
    store = SqlStore(url)
    store.journal = MerkleJournal()
    await store.open()
    try:
        report = await AuditLog(store, Audit(origin=ORIGIN), None).verify()
        assert report.ok, report.as_dict()  # includes: every change has one entry, every entry cites a change
        changes = await store.list_changes(limit=100_000)
        issued = {c.target for c in changes if c.action == "key.issue"}
        revoked = {c.target for c in changes if c.action == "key.revoke"}
        keys = {k.id: k for k in await store.list_keys() if k.source != "config"}
        assert set(keys) == issued  # no key without its change
        assert {k for k, v in keys.items() if v.revoked_at is not None} == revoked  # no revocation without its change
        return report.size
    finally:
        await store.close()


async def test_sigkill_mid_burst_leaves_changes_and_entries_paired(tmp_path, store_url):
    sim = Sim(tmp_path)
    extra = {"store": {"url": store_url}, "audit": {"origin": ORIGIN, "checkpoint_interval_s": 0}}
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": f"{sim.url}/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}], identities=[], extra=extra)
    try:
        ident = g.admin("POST", "/admin/identities", json={"name": "burst", "owner": "o@example.com"}).json()["id"]
        stop, done = threading.Event(), []
        workers = [threading.Thread(target=_burst, args=(g, ident, stop, done)) for _ in range(8)]
        for w in workers:
            w.start()
        deadline = time.monotonic() + 60
        while len(done) < 40 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert g.proc.stop(signal.SIGKILL) == -signal.SIGKILL  # requests still in flight
        stop.set()
        for w in workers:
            w.join(15)
        size = await _check(store_url)
        assert size > 40
        again = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": f"{sim.url}/v1"}],
                              models=[{"name": "sim-small", "upstream": "sim"}], identities=[], extra=extra)
        try:
            assert again.admin("POST", f"/admin/identities/{ident}/keys", json={}).status_code == 201
            report = again.admin("GET", "/admin/audit/verify").json()
            assert report["ok"] and report["size"] == size + 1, report
        finally:
            again.stop()
    finally:
        g.stop()
        sim.stop()
