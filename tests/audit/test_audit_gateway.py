"""The audit log from the outside: a real sluice process, its control plane and the `sluice audit`
commands. Every change gets an entry citing its request; failed logins, the dashboard's sign-in
form's too, are logged within one bound; checkpoints go to an append-only file; proofs verify
against a signed root; the offline verifier needs only the export, a checkpoint and the public
key, and catches a cut export or another key."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import time

import httpx
import pytest

from sluice.audit import Signer, merkle
from sluice.core import clock
from sluice.audit.note import split_notes
from sluice.identity import generate
from support import Sim, start_gateway

ORIGIN = "test.sluice/gateway-audit"


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit-gw")
    sim = Sim(tmp)
    key = Signer.generate(ORIGIN)
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": f"{sim.url}/v1"}], models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[{"name": "app", "owner": "dev@example.com", "models": ["sim-small"]}],
        extra={"audit": {"origin": ORIGIN, "signing_key": key.text(), "checkpoint_interval_s": 0,
                         "checkpoint_file": str(tmp / "checkpoints.log"), "failed_logins_per_minute": 3},
               "identity": {"auth_failures_per_minute": 1000}})
    g.signer = key
    yield g
    g.stop()
    sim.stop()


def sluice(g, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sluice", "audit", *args], capture_output=True, text=True,
                          cwd=g.tmp, timeout=120)


def entries(g) -> list[dict]:
    got = g.admin("GET", "/admin/audit/entries", params={"since": "0", "limit": 100000})
    assert got.status_code == 200, got.text
    return got.json()["data"]


def test_every_control_plane_change_gets_an_entry_citing_its_request_and_source(gw):
    made = gw.admin("POST", "/admin/identities", json={"name": "audited", "owner": "o@example.com", "models": ["sim-small"]})
    assert made.status_code == 201
    ident = made.json()["id"]
    issued = gw.admin("POST", f"/admin/identities/{ident}/keys", json={})
    revoked = gw.admin("POST", f"/admin/keys/{issued.json()['id']}/revoke")
    limits = gw.admin("PUT", "/admin/limits", json={"rules": []})
    assert revoked.status_code == 200 and limits.status_code == 200
    by_request = {e["request_id"]: e for e in entries(gw)}
    for reply, action, target in ((made, "identity.create", ident), (issued, "key.issue", issued.json()["id"]),
                                  (revoked, "key.revoke", issued.json()["id"]), (limits, "limits.replace", "limits")):
        e = by_request[reply.headers["x-request-id"]]
        assert (e["action"], e["target"], e["source"]) == (action, target, "127.0.0.1")
        assert e["actor"].startswith("config-admin") and e["change_id"]
    issue, revoke = by_request[issued.headers["x-request-id"]], by_request[revoked.headers["x-request-id"]]
    assert issue["before"] != issue["after"] and revoke["before"] == issue["after"] != revoke["after"]
    assert issued.json()["key"] not in json.dumps(entries(gw))  # the secret never enters the log


def _minute() -> int:
    """The gateway's failed-login window: ``clock.monotonic() // 60``. That clock is the machine's
    CLOCK_MONOTONIC, so the test reads the same windows the gateway counts in."""
    return int(clock.monotonic() // 60)


def _wait_for_minute_after(window: int) -> None:
    deadline = time.monotonic() + 65
    while _minute() <= window:
        assert time.monotonic() < deadline, "the monotonic minute never turned"
        time.sleep(min(0.5, max(0.01, 60 - clock.monotonic() % 60)))


def test_failed_logins_are_entries_bounded_per_minute_and_counted_beyond(gw):
    """The budget is 3 a minute: 8 failures in one minute are 3 entries and 5 counted; the first
    failure of the next minute is an entry carrying those 5. Waits (up to a minute) for it to turn."""

    def fail() -> None:
        bad = httpx.get(gw.admin_url + "/admin/whoami", headers={"Authorization": "Bearer sla_prod_nope"}, timeout=10)
        assert bad.status_code == 401

    before = [e for e in entries(gw) if e["action"] == "login.failed"]
    assert before == []  # no other test fails a login on this gateway: nothing is held back from earlier
    if clock.monotonic() % 60 > 45:  # too near a minute's end for 8 requests to surely fit in it
        _wait_for_minute_after(_minute())
    window = _minute()
    for _ in range(8):
        fail()
    assert _minute() == window, "the 8 failures straddled a minute"
    _wait_for_minute_after(window)
    fail()
    logged = [e for e in entries(gw) if e["action"] == "login.failed"]
    assert [e["detail"]["suppressed"] for e in logged] == [0, 0, 0, 5], logged
    assert all(e["source"] == "127.0.0.1" and e["actor"] == "-" and e["change_id"] is None for e in logged)
    assert all(e["target"] == "/admin/whoami" for e in logged)
    assert "sla_prod_nope" not in json.dumps(logged)


def test_proofs_verify_against_a_signed_checkpoint_and_the_file_sink_only_grows(gw):
    first = gw.admin("POST", "/admin/audit/checkpoint")
    assert first.status_code == 200 and first.json()["checkpoint"].startswith(ORIGIN + "\n")
    first = first.json()["checkpoint"]
    gw.admin("POST", "/admin/teams", json={"name": "proofs", "owner": "o@example.com"})
    second = gw.admin("POST", "/admin/audit/checkpoint").json()["checkpoint"]
    old, new = (int(n.split("\n")[1]) for n in (first, second))
    root = base64.b64decode(second.split("\n")[2])
    assert new > old
    inc = gw.admin("GET", "/admin/audit/proof/inclusion", params={"leaf": 1, "size": new}).json()
    assert merkle.verify_inclusion(1, new, bytes.fromhex(inc["leaf_hash"]), [bytes.fromhex(p) for p in inc["proof"]], root)
    con = gw.admin("GET", "/admin/audit/proof/consistency", params={"old": old, "new": new}).json()
    assert merkle.verify_consistency(old, new, base64.b64decode(first.split("\n")[2]), root,
                                     [bytes.fromhex(p) for p in con["proof"]])
    sink = split_notes((gw.tmp / "checkpoints.log").read_text())
    assert sink[-2:] == [first, second]
    assert gw.admin("GET", "/admin/audit/public-key").json()["public_key"] == gw.signer.verifier().text()
    bad = gw.admin("GET", "/admin/audit/proof/inclusion", params={"leaf": 10**9})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"


def test_cli_verifies_exports_and_verifies_offline_from_three_files(gw, tmp_path):
    cfg = str(gw.config_path)
    ok = sluice(gw, "verify", "-c", cfg, "--checkpoint", str(gw.tmp / "checkpoints.log"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    cp = sluice(gw, "checkpoint", "-c", cfg)
    assert cp.returncode == 0 and cp.stdout.startswith(ORIGIN)
    (tmp_path / "cp").write_text(cp.stdout)
    pub = sluice(gw, "public-key", "-c", cfg).stdout.strip()
    (tmp_path / "pub").write_text(pub)
    assert sluice(gw, "export", "-c", cfg, "--since", "1970-01-01T00:00:00Z", "--out", str(tmp_path / "export.jsonl")).returncode == 0
    offline = ["verify", "--offline", "--export", str(tmp_path / "export.jsonl"), "--checkpoint", str(tmp_path / "cp"),
               "--public-key", str(tmp_path / "pub"), "-c", "/nonexistent.yaml", "-o", "json"]
    got = sluice(gw, *offline)
    assert got.returncode == 0, got.stdout + got.stderr
    lines = (tmp_path / "export.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "export.jsonl").write_bytes(b"".join(lines[:-2]))  # a cut export
    got = sluice(gw, *offline)
    assert got.returncode == 1 and json.loads(got.stdout)["first"]["kind"] == "truncated", got.stdout
    (tmp_path / "export.jsonl").write_bytes(b"".join(lines))
    (tmp_path / "pub").write_text(Signer.generate(ORIGIN).verifier().text())  # a verifier for another key
    got = sluice(gw, *offline)
    assert got.returncode == 1 and json.loads(got.stdout)["first"]["kind"] == "checkpoint", got.stdout


def test_cli_verify_names_the_row_edited_in_the_database(gw):
    ok = gw.admin("GET", "/admin/audit/verify").json()
    assert ok["ok"], ok
    db = sqlite3.connect(gw.tmp / "sluice.db")
    try:
        (entry,) = db.execute("SELECT entry FROM audit_log WHERE seq = 2").fetchone()
        db.execute("UPDATE audit_log SET entry = ? WHERE seq = 2", (entry.replace('"actor":"', '"actor":"x'),))
        db.commit()
        got = sluice(gw, "verify", "-c", str(gw.config_path), "-o", "json")
        assert got.returncode == 1 and json.loads(got.stdout)["first"]["seq"] == 2, got.stdout
        assert "entry 2" in got.stderr
        for_people = sluice(gw, "verify", "-c", str(gw.config_path))
        assert for_people.returncode == 1 and "FAILED at entry 2" in for_people.stderr and not for_people.stdout
        assert gw.admin("GET", "/admin/audit/verify").json()["first"]["seq"] == 2
    finally:
        db.execute("UPDATE audit_log SET entry = ? WHERE seq = 2", (entry,))
        db.commit()
        db.close()
    assert gw.admin("GET", "/admin/audit/verify").json()["ok"]


def test_a_source_over_its_failure_rate_gets_429s_that_are_not_logged(tmp_path):
    sim = Sim(tmp_path)
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": f"{sim.url}/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}], identities=[],
                      extra={"identity": {"auth_failures_per_minute": 3}, "audit": {"checkpoint_interval_s": 0}})
    try:
        codes = [httpx.get(g.admin_url + "/admin/whoami", headers={"Authorization": "Bearer sla_prod_nope"},
                           timeout=10).status_code for _ in range(10)]
        assert codes[:3] == [401] * 3 and set(codes[3:]) == {429}
        logged = [e for e in entries(g) if e["action"] == "login.failed"]
        assert len(logged) == 3
    finally:
        g.stop()
        sim.stop()


def test_failed_dashboard_logins_are_entries_within_the_control_planes_budget_and_never_hold_the_key(sim, tmp_path):
    """The form's failures share the per-minute budget of every control-plane 401: this waits (up
    to a minute) for a minute to turn, so the budget's state is known, then spends it."""
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": f"{sim.url}/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim"}], identities=[],
                      extra={"identity": {"auth_failures_per_minute": 100_000},
                             "audit": {"checkpoint_interval_s": 0, "failed_logins_per_minute": 2}})
    tried = generate("prod", kind="admin")  # well formed, never issued

    def form() -> None:
        r = httpx.post(g.admin_url + "/admin/dashboard/login", data={"key": tried}, timeout=10)
        assert r.status_code == 401 and "not a valid control-plane key" in r.text

    def failed() -> list[dict]:
        return [e for e in entries(g) if e["action"] == "login.failed"]

    try:
        form()
        (first,) = failed()
        assert (first["target"], first["source"], first["actor"], first["change_id"]) == (
            "/admin/dashboard/login", "127.0.0.1", "-", None)
        assert first["detail"] == {"code": "invalid_api_key", "suppressed": 0} and first["request_id"]
        # fail at the form until an entry counts failures held back: the first entry of a new minute
        sent, deadline = 1, time.monotonic() + 75
        while not failed()[-1]["detail"]["suppressed"]:
            assert time.monotonic() < deadline, failed()
            form()
            sent += 1
            time.sleep(0.2)  # pacing, not waiting on anything: a minute of failures, not thousands
        logged = failed()
        assert all(e["target"] == "/admin/dashboard/login" for e in logged)
        assert len(logged) + sum(e["detail"]["suppressed"] for e in logged) == sent  # each an entry, or counted
        # a new minute with one of its two entries spent: a bearer 401 takes the other, the form gets none
        bad = httpx.get(g.admin_url + "/admin/whoami", headers={"Authorization": f"Bearer {tried}"}, timeout=10)
        assert bad.status_code == 401
        for _ in range(3):
            form()
        assert [e["target"] for e in failed()[len(logged):]] == ["/admin/whoami"]
        assert tried not in json.dumps(entries(g)) and tried[-8:] not in json.dumps(entries(g))
    finally:
        g.stop()
