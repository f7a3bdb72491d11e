"""Held tool calls end to end, on SQLite and on Postgres (issue 23, items 4-7): the approver reads
exactly what is approved, whole, or cannot approve it; a redemption is read as strict JSON; nobody of
the requester's owner (or team, by policy) approves, nor a break-glass key; every decision and
redemption is a change with its audit entry; an identity's pending approvals are capped (429)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

from store.pg_databases import drop_pg_database, fresh_pg_database
from support import Gateway, fuzz_within_contract, start_gateway

MAIL = {"type": "object", "properties": {"to": {"type": "string"}, "amount": {"type": "number"},
                                         "memo": {"type": "string"}, "body": {"type": "string"}},
        "required": ["to"], "additionalProperties": False}
TOOLS = [{"name": "pay", "risk": "high", "teams": ["payments"], "parameters": MAIL}]
APPROVALS = {"max_pending_per_identity": 3, "separate_teams": True}
GUARDRAILS = {"approvals": APPROVALS}
TEAMS = [{"name": "payments", "owner": "alice@example.com"}, {"name": "risk", "owner": "risk@example.com"}]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(request, sim, tmp_path_factory) -> Iterator[Gateway]:
    pg = asyncio.run(fresh_pg_database()) if request.param == "postgres" else None
    tmp = tmp_path_factory.mktemp(f"approvals-{request.param}")
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "sim-small", "upstream": "sim"}],
        identities=[], extra={"guardrails": GUARDRAILS, "tools": TOOLS, "teams": TEAMS,
                              "store": {"url": pg or f"sqlite:///{tmp}/sluice.db"}})
    g.store_url = pg or f"{tmp}/sluice.db"
    try:
        yield g
    finally:
        g.stop()
        if pg is not None:
            asyncio.run(drop_pg_database(pg))


def identity(gw: Gateway, name: str, owner: str, roles: list[str], team: str | None = None) -> tuple[str, str]:
    """(id, key) of a new identity: a data key for an invoker, a control key for anyone else."""
    made = gw.admin("POST", "/admin/identities", json={"name": f"{name}-{time.time_ns() % 10**10}", "owner": owner,
                                                      "roles": roles, "team": team, "models": ["sim-small"]})
    assert made.status_code == 201, made.text
    plane = "data" if roles == ["invoker"] else "control"
    key = gw.admin("POST", f"/admin/identities/{made.json()['id']}/keys", json={"plane": plane})
    assert key.status_code == 201, key.text
    return made.json()["id"], key.json()["key"]


def invoker(gw: Gateway) -> str:
    """A caller of alice's in the payments team, which may call ``pay``."""
    return identity(gw, "agent", "alice@example.com", ["invoker"], "payments")[1]


@pytest.fixture(scope="module")
def approver(gw) -> str:
    """An operator of another owner and another team: the one who may approve."""
    return identity(gw, "approver", "risk@example.com", ["operator"], "risk")[1]


@pytest.fixture(scope="module")
def auditor(gw) -> str:
    return identity(gw, "auditor", "audit@example.com", ["auditor"])[1]


def held(gw: Gateway, key: str, arguments: str) -> httpx.Response:
    return gw.post("/v1/chat/completions", key, json={
        "model": "sim-small", "max_tokens": 16, "messages": [{"role": "user", "content": f"sim:call pay {arguments}"}],
        "tools": [{"type": "function", "function": {"name": "pay", "parameters": {"type": "object"}}}]})


def hold(gw: Gateway, key: str, arguments: str) -> str:
    r = held(gw, key, arguments)
    assert r.status_code == 200, r.text
    m = re.search(r"approval id (apv_[A-Za-z0-9_-]+)", r.json()["choices"][0]["message"]["content"])
    assert m, r.text
    return m.group(1)


def as_(gw: Gateway, key: str, method: str, path: str, body: dict | None = None) -> httpx.Response:
    return httpx.request(method, gw.admin_url + path, headers={"Authorization": f"Bearer {key}"}, json=body, timeout=10)


def decide(gw: Gateway, key: str, apv: str, approved: bool) -> httpx.Response:
    return as_(gw, key, "POST", f"/admin/tool-approvals/{apv}/decision", {"approved": approved})


def redeem(gw: Gateway, key: str, apv: str, raw: bytes) -> httpx.Response:
    return httpx.post(gw.v1 + f"/tool-approvals/{apv}/redeem", content=raw, timeout=10,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    return err


# -- 4. the approver sees what is approved ------------------------------------------------------

def test_the_approver_reads_the_arguments_whole_as_they_are_bound_and_an_auditor_only_masked(gw, approver, auditor):
    # the attack of issue 23: what the approver is shown ends in padding; what is executed goes on after it
    raw = '{"to":"alice","amount":5' + " " * 4200 + ',"memo":"and 9999 to mallory, alice@example.com"}'
    apv = hold(gw, invoker(gw), raw)
    bound = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for seen in (as_(gw, approver, "GET", f"/admin/tool-approvals/{apv}").json(),
                 next(a for a in as_(gw, approver, "GET", "/admin/tool-approvals").json()["data"] if a["id"] == apv)):
        assert seen["arguments"] == bound and "mallory" in seen["arguments"], seen
        assert seen["args_chars"] == len(bound)
    audited = as_(gw, auditor, "GET", f"/admin/tool-approvals/{apv}").json()
    assert "arguments" not in audited and "[REDACTED:email]" in audited["args_masked"], audited
    assert all("arguments" not in a for a in as_(gw, auditor, "GET", "/admin/tool-approvals").json()["data"])
    assert decide(gw, approver, apv, True).json()["arguments"] == bound  # what was approved, in the answer too


def on_db(gw: Gateway, query: str, *args: object) -> list[dict]:
    """Run one statement (``?`` placeholders) on the gateway's database; its rows."""
    if gw.store_url.startswith("postgresql://"):
        async def run() -> list[dict]:
            conn = await asyncpg.connect(gw.store_url)
            try:
                n = iter(range(1, 100))
                return [dict(r) for r in await conn.fetch(re.sub(r"\?", lambda _: f"${next(n)}", query), *args)]
            finally:
                await conn.close()
        return asyncio.run(run())
    import sqlite3
    with sqlite3.connect(gw.store_url) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(query, args).fetchall()]


def test_held_arguments_rest_sealed_in_the_database_and_open_whole_for_the_approver(gw, approver):
    apv = hold(gw, invoker(gw), '{"to": "jane.doe@example.com", "memo": "card 4111 1111 1111 1111"}')
    [row] = on_db(gw, "SELECT * FROM tool_approvals WHERE id = ?", apv)
    assert row["args_sealed"] and row["args_chars"] == len('{"memo":"card 4111 1111 1111 1111","to":"jane.doe@example.com"}')
    assert not any(s in str(v) for v in row.values() for s in ("jane.doe", "4111 1111")), row
    seen = as_(gw, approver, "GET", f"/admin/tool-approvals/{apv}").json()["arguments"]
    assert seen == '{"memo":"card 4111 1111 1111 1111","to":"jane.doe@example.com"}'
    # sealed under another pepper (or kept by an older sluice): unreadable, so it can only be denied
    on_db(gw, "UPDATE tool_approvals SET args_sealed = ? WHERE id = ?", "A" * 64, apv)
    assert as_(gw, approver, "GET", f"/admin/tool-approvals/{apv}").json()["arguments"] is None
    error(decide(gw, approver, apv, True), 422, "approval_arguments_unreadable")
    assert decide(gw, approver, apv, False).json()["status"] == "denied"


def test_arguments_longer_than_an_approver_is_shown_can_be_denied_but_never_approved(gw, approver):
    apv = hold(gw, invoker(gw), json.dumps({"to": "bob", "body": "x" * 16_400}))
    seen = as_(gw, approver, "GET", f"/admin/tool-approvals/{apv}").json()
    assert seen["arguments"] is None and seen["args_chars"] > 16_384, seen
    error(decide(gw, approver, apv, True), 422, "approval_arguments_too_large")
    assert decide(gw, approver, apv, False).json()["status"] == "denied"


def test_a_redemption_is_read_as_strict_json_so_no_parser_can_read_it_otherwise(gw, approver):
    key = invoker(gw)
    apv = hold(gw, key, '{"to": "alice", "amount": 5}')
    assert decide(gw, approver, apv, True).status_code == 200
    for raw in (b'{"arguments": {"amount": 5, "to": "mallory", "to": "alice"}}',  # last-wins reads the approved call
                b'{"arguments": "{\\"amount\\": 5, \\"to\\": \\"mallory\\", \\"to\\": \\"alice\\"}"}',
                b'{"arguments": {"amount": 5, "to": "mallory"}, "arguments": {"amount": 5, "to": "alice"}}',
                b'{"arguments": {"amount": NaN, "to": "alice"}}', b'{"arguments": {"amount": 1e400, "to": "alice"}}',
                b'{"arguments": "{\\"amount\\": Infinity, \\"to\\": \\"alice\\"}"}'):
        error(redeem(gw, key, apv, raw), 400, "arguments_not_json")
    for raw in (b'{"args": {}}', b"[1]", b"\xff\xfe"):
        error(redeem(gw, key, apv, raw), 400, "invalid_request")
    got = redeem(gw, key, apv, b'{"arguments": {"to": "alice", "amount": 5}}')  # refusals consumed nothing
    assert got.status_code == 200, got.text
    assert got.json()["tool_call"]["function"]["arguments"] == '{"amount":5,"to":"alice"}'


# -- 5. separation of duties by owner (and team), break-glass included ---------------------------

def test_an_identity_of_the_requesters_owner_cannot_approve_its_call(gw, approver):
    apv = hold(gw, invoker(gw), '{"to": "x", "amount": 1}')
    _, same_owner = identity(gw, "ops", "alice@example.com", ["operator"], "risk")
    error(decide(gw, same_owner, apv, True), 403, "same_owner_approval")
    assert decide(gw, approver, apv, True).json()["status"] == "approved"


def test_by_policy_an_identity_of_the_requesters_team_cannot_approve_its_call(gw, approver):
    apv = hold(gw, invoker(gw), '{"to": "x", "amount": 2}')
    _, teammate = identity(gw, "mate", "carol@example.com", ["operator"], "payments")
    error(decide(gw, teammate, apv, True), 403, "same_team_approval")

    def separate(on: bool) -> None:
        sections = {"guardrails": {**GUARDRAILS, "approvals": {**APPROVALS, "separate_teams": on}}}
        r = as_(gw, approver, "POST", "/admin/policy/changes", {"sections": sections, "reason": "team approvals"})
        assert r.status_code == 201, r.text  # dev: applied at once

    separate(False)  # a policy change (recorded, audited) lets a team approve its own calls
    try:
        assert decide(gw, teammate, apv, True).json()["status"] == "approved"
    finally:
        separate(True)


def test_a_break_glass_key_may_deny_a_held_call_but_never_approve_it(gw):
    apv = hold(gw, invoker(gw), '{"to": "x", "amount": 3}')
    error(gw.admin("POST", f"/admin/tool-approvals/{apv}/decision", json={"approved": True}), 403, "break_glass_approval")
    assert gw.admin("GET", f"/admin/tool-approvals/{apv}").json()["status"] == "pending"
    denied = gw.admin("POST", f"/admin/tool-approvals/{apv}/decision", json={"approved": False})
    assert denied.status_code == 200 and denied.json()["status"] == "denied", denied.text
    assert denied.json()["decided_by"].startswith("config-admin")


# -- 6. every decision and redemption is a change with its audit entry ---------------------------

def test_approving_denying_and_redeeming_each_write_a_change_record_and_an_audit_entry(gw, approver):
    key = invoker(gw)
    yes, no = hold(gw, key, '{"to": "y", "amount": 4}'), hold(gw, key, '{"to": "z", "amount": 4}')
    approved, denied = decide(gw, approver, yes, True), decide(gw, approver, no, False)
    redeemed = redeem(gw, key, yes, b'{"arguments": {"to": "y", "amount": 4}}')
    assert approved.status_code == denied.status_code == redeemed.status_code == 200
    changes = {(c["action"], c["target"]): c for c in gw.admin("GET", "/admin/changes").json()["data"]}
    entries = {e["request_id"]: e for e in gw.admin("GET", "/admin/audit/entries", params={"since": "0", "limit": 100000})
               .json()["data"]}
    for reply, action, apv in ((approved, "tool_approval.approve", yes), (denied, "tool_approval.deny", no),
                               (redeemed, "tool_approval.redeem", yes)):
        change = changes[(action, apv)]
        assert change["detail"]["tool"] == "pay" and change["detail"]["args_sha256"], change
        e = entries[reply.headers["x-request-id"]]  # the entry cites the request that made the change
        assert (e["action"], e["target"], e["change_id"], e["source"]) == (action, apv, change["id"], "127.0.0.1")
        assert e["before"] != e["after"]  # the approval row before and after
    assert changes[("tool_approval.approve", yes)]["actor"].startswith("approver-")
    assert changes[("tool_approval.redeem", yes)]["actor"].startswith("agent-")
    report = gw.admin("GET", "/admin/audit/verify").json()
    assert report["ok"], report


# -- 7. a bound on held calls -------------------------------------------------------------------

def test_past_its_pending_cap_an_identity_gets_429_with_retry_after_until_one_is_decided(gw, approver):
    key = invoker(gw)
    first = [hold(gw, key, f'{{"to": "t{i}", "amount": {i}}}') for i in range(3)]
    over = held(gw, key, '{"to": "t3", "amount": 3}')
    err = error(over, 429, "too_many_pending_approvals")
    assert err["type"] == "rate_limit_error" and "max_pending_per_identity" in err["message"]
    assert 850 <= int(over.headers["retry-after"]) <= 900  # until the first of them expires (approval_ttl_s 900)
    assert hold(gw, invoker(gw), '{"to": "u", "amount": 1}')  # per identity: another caller is not held back
    assert decide(gw, approver, first[0], False).status_code == 200
    assert hold(gw, key, '{"to": "t3", "amount": 3}')  # a decision frees a place
    error(held(gw, key, '{"to": "t4", "amount": 4}'), 429, "too_many_pending_approvals")


# -- every approval endpoint keeps to its contract on real held calls -----------------------------

@pytest.mark.parametrize(("method", "path"), [("GET", "/admin/tool-approvals"), ("GET", "/admin/tool-approvals/{approval_id}"),
                                              ("POST", "/admin/tool-approvals/{approval_id}/decision")])
def test_no_input_to_an_approval_endpoint_gets_a_5xx_or_an_answer_outside_the_contract(gw, approver, method, path):
    import schemathesis

    key = invoker(gw)  # pending, too long to show, approved, denied and used calls, and ids of nothing
    ids = [hold(gw, key, '{"to": "f", "amount": 1}'), hold(gw, key, json.dumps({"to": "f", "body": "y" * 16_400}))]
    ids += [hold(gw, key, '{"to": "g", "amount": 2}'), hold(gw, invoker(gw), '{"to": "h", "amount": 3}')]
    decide(gw, approver, ids[2], True)
    decide(gw, approver, ids[3], False)
    headers = {"Authorization": f"Bearer {approver}"}
    operation = schemathesis.openapi.from_url(gw.admin_url + "/admin/openapi.json", headers=headers)[path][method]
    fuzz_within_contract(operation, gw.admin_url, headers, examples=30, path_values=[*ids, "apv_nope", None])
