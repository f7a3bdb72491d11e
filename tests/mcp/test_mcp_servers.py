"""The upstream MCP servers as part of the versioned policy (issue 25, item 2): the config file seeds the ``mcp``
section's ``servers`` once; after that a change set adds, changes or removes a server, and every replica reconciles
its live servers when it activates the version, without a restart.

Real parts: sluice processes (two replicas sharing Postgres), fastmcp servers over HTTP (upstream_server.py) and
over stdio (stdio_server.py, launched by sluice), the admin API as ``sluice policy propose`` uses it, and
``sluice audit verify``."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from sluice.identity import generate
from support import Gateway, start_gateway
from store.pg_databases import drop_pg_database, fresh_pg_database
from test_mcp_calls import ENV, call_body, post_path, servers, session_of_path  # noqa: F401 - servers: a fixture
from test_mcp_gateway import INIT, ToolServer
from test_mcp_resources import active_mcp, audit_entries

HERE = Path(__file__).parent
WEATHER = [{"name": f"{s}__{t}", "risk": "read", "identities": ["agent"]}
           for s in ("files", "notes", "local", "moving") for t in ("get_weather", "slow", "pid")]


def files_only(files: ToolServer) -> dict:
    # pin: off - these tests are about which servers run, not their definitions (test_mcp_pins.py pins)
    return {"servers": [{"name": "files", "url": files.url, "credential_env": "FILES_TOKEN", "pin": "off"}]}


def call(g: Gateway, key: str, server: str, tool: str, args: dict) -> httpx.Response:
    """One tools/call on ``/mcp/{server}`` in a session of its own (``/mcp`` when server is empty)."""
    path = f"/mcp/{server}" if server else "/mcp"
    init = post_path(g, key, INIT, None, path)
    if init.status_code != 200:
        return init
    return post_path(g, key, call_body(tool, args), init.headers["mcp-session-id"], path)


def text(r: httpx.Response) -> str | None:
    body = r.json() if r.status_code == 200 else {}
    return body.get("result", {}).get("content", [{}])[0].get("text")


def eventually(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def propose(g: Gateway, mcp: dict, reason: str) -> httpx.Response:
    return g.admin("POST", "/admin/policy/changes", json={"sections": {"mcp": mcp}, "reason": reason})


def verify_audit(g: Gateway) -> None:
    done = subprocess.run([sys.executable, "-m", "sluice", "audit", "verify", "-c", str(g.config_path)],
                          capture_output=True, text=True, cwd=g.tmp, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_server_added_by_a_change_set_serves_on_two_replicas_then_leaves_and_a_rollback_brings_it_back(
        servers, sim, tmp_path_factory):  # noqa: F811
    files, notes = servers
    pg = asyncio.run(fresh_pg_database())
    tmp = tmp_path_factory.mktemp("mcp-servers-replicas")
    key = generate("dev")
    common = dict(upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "m", "upstream": "sim"}],
                  identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"], "keys": [key]}],
                  env=ENV, admin_key=generate("prod", kind="admin"),
                  extra={"store": {"url": pg}, "tools": WEATHER, "mcp": files_only(files)})
    for side in ("a", "b"):
        (tmp / side).mkdir()
    one, two = start_gateway(tmp / "a", **common), start_gateway(tmp / "b", **common)
    both = (one, two)
    try:
        seeded = active_mcp(one)
        assert [s["name"] for s in seeded["servers"]] == ["files"]  # the config file seeded the section
        assert "pin" not in seeded["servers"][0] and seeded["pin"] == {"files": "off"}
        for g in both:
            assert call(g, key, "notes", "notes__get_weather", {"city": "Oslo"}).json()["error"]["data"]["code"] == \
                "unknown_server"
        with_notes = {**seeded, "pin": {**seeded["pin"], "notes": "off"}, "servers": seeded["servers"] + [
            {"name": "notes", "url": notes.url, "credential_env": "NOTES_TOKEN"}]}
        added = propose(one, with_notes, "the notes server")
        assert added.status_code == 201, added.text
        before_notes = len(notes.seen())
        for g, city in ((one, "Lima"), (two, "Quito")):  # no restart: the other replica within its poll interval
            eventually(lambda: text(call(g, key, "notes", "notes__get_weather", {"city": city})) == f"sunny in {city}",
                       f"notes never served on {g.url}")
            assert text(call(g, key, "", "notes__get_weather", {"city": city})) == f"sunny in {city}"  # and on /mcp
        assert set(notes.seen()[before_notes:]) == {f"Bearer {ENV['NOTES_TOKEN']}"}  # its own credential
        assert text(call(two, key, "files", "files__get_weather", {"city": "Cusco"})) == "sunny in Cusco"

        async def slow_call_while_removed() -> httpx.Response:  # in flight when its server is removed: it finishes
            sid = session_of_path(two, key, "/mcp/notes")
            async with httpx.AsyncClient(timeout=30) as client:
                slow = asyncio.ensure_future(client.post(f"{two.url}/mcp/notes", content=call_body(
                    "notes__slow", {"seconds": 3, "tag": "late"}), headers={
                    "Authorization": f"Bearer {key}", "Mcp-Session-Id": sid, "Content-Type": "application/json",
                    "Accept": "application/json, text/event-stream"}))
                await asyncio.sleep(1.0)
                removed = await asyncio.to_thread(propose, one, seeded, "notes is retired")
                assert removed.status_code == 201, removed.text
                return await asyncio.wait_for(slow, 20)

        t0 = time.monotonic()
        late = asyncio.run(slow_call_while_removed())
        assert text(late) == "done late" and time.monotonic() - t0 < 15, late.text
        for g in both:  # gone on both: the existing refusals, a new session as an old one
            eventually(lambda: call(g, key, "notes", "notes__get_weather", {"city": "Oslo"}).status_code == 404,
                       f"notes still served on {g.url}")
            gone = call(g, key, "notes", "notes__get_weather", {"city": "Oslo"}).json()["error"]
            assert gone["data"]["code"] == "unknown_server", gone
            assert call(g, key, "", "notes__get_weather", {"city": "Oslo"}).json()["error"]["data"]["code"] == \
                "unknown_tool"
            assert text(call(g, key, "files", "files__get_weather", {"city": "Arica"})) == "sunny in Arica"
        assert "mcp: servers files (started none, retired notes)" in two.log()

        back = one.admin("POST", "/admin/policy/rollback", json={"reason": "notes again"})
        assert back.status_code == 200, back.text
        assert [s["name"] for s in active_mcp(one)["servers"]] == ["files", "notes"]
        for g, city in ((one, "Iquique"), (two, "Tacna")):
            eventually(lambda: text(call(g, key, "notes", "notes__get_weather", {"city": city})) == f"sunny in {city}",
                       f"the rollback never brought notes back on {g.url}")
        actions = {a: len(audit_entries(one, a)) for a in ("policy.propose", "policy.rollback")}
        assert actions["policy.propose"] >= 2 and actions["policy.rollback"] >= 1, actions
        verify_audit(one)
    finally:
        one.stop()
        two.stop()
        asyncio.run(drop_pg_database(pg))


@pytest.fixture(scope="module")
def gw(servers, sim, tmp_path_factory):  # noqa: F811
    files, _ = servers
    mcp = {**files_only(files), "allowed_commands": [sys.executable]}
    g = start_gateway(tmp_path_factory.mktemp("mcp-servers"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                      extra={"tools": WEATHER, "mcp": mcp}, env={**ENV, "LOCAL_TOKEN": "local-token-5d1e"})
    yield g
    g.stop()


def test_a_stdio_command_off_the_config_files_allow_list_is_refused_at_propose_and_never_launched(gw, tmp_path):
    marker = tmp_path / "launched"
    section = active_mcp(gw)
    version = gw.admin("GET", "/admin/policy").json()["version"]
    shell = {"name": "shell", "command": ["/bin/sh", "-c", f"touch {marker}"], "network": "allow"}
    refused = propose(gw, {**section, "servers": section["servers"] + [shell]}, "a shell")
    assert refused.status_code == 400, refused.text
    message = refused.json()["error"]["message"]
    assert "MCP server 'shell' runs '/bin/sh', which is not in the config file's mcp.allowed_commands" in message
    time.sleep(1.0)
    assert not marker.exists() and gw.admin("GET", "/admin/policy").json()["version"] == version
    assert "shell" not in gw.log()


@pytest.mark.parametrize("entry, why", [
    ({"name": "files", "prefix": "docs"}, "MCP server 'files' keeps its namespace 'files'"),
    ({"name": "other", "url": "http://127.0.0.1:9/mcp", "credential_env": "UNSET_IN_ANY_TEST_71"},
     "the environment variable 'UNSET_IN_ANY_TEST_71' (credential_env) is unset here"),
    ({"name": "other", "url": "http://u:secret@127.0.0.1:9/mcp"}, "carries no credential"),
    ({"name": "other", "url": "ftp://127.0.0.1/mcp"}, "url must be http(s)"),
    ({"name": "no good", "url": "http://127.0.0.1:9/mcp"}, "`$.mcp.servers[1].name`"),
    ({"name": "other", "url": "http://127.0.0.1:9/mcp", "pin": "off"}, "unknown field `pin`"),
    ({"name": "other", "url": "http://127.0.0.1:9/mcp", "prefix": "files"}, "duplicate MCP server prefix 'files'"),
])
def test_a_server_entry_is_validated_when_proposed(gw, entry, why):
    section = active_mcp(gw)
    files = section["servers"][0]
    entries = [{**files, **entry}] if entry["name"] == "files" else [files, {**entry}]
    refused = propose(gw, {**section, "servers": entries}, "a bad server")
    assert refused.status_code == 400, refused.text
    assert why in refused.json()["error"]["message"], refused.text
    assert "secret" not in refused.text


def test_a_stdio_server_added_by_a_change_set_is_launched_and_stopped_when_removed(gw):
    section = active_mcp(gw)
    local = {"name": "local", "command": [sys.executable, str(HERE / "stdio_server.py")], "network": "allow",
             "env": {"LOCAL_TOKEN": "${LOCAL_TOKEN}"}}
    added = propose(gw, {**section, "pin": {**section["pin"], "local": "off"}, "servers": section["servers"] + [local]},
                    "a local server")
    assert added.status_code == 201, added.text
    stored = next(s for s in active_mcp(gw)["servers"] if s["name"] == "local")
    assert stored["env"] == {"LOCAL_TOKEN": "${LOCAL_TOKEN}"}  # the reference is stored, never the secret
    key = gw.keys["agent"]
    pid = None

    def launched() -> bool:
        nonlocal pid
        got = text(call(gw, key, "local", "local__pid", {}))
        pid = int(got) if got and got.isdigit() else None
        return pid is not None

    eventually(launched, "the stdio server never served")
    os.kill(pid, 0)
    removed = propose(gw, section, "no local server")
    assert removed.status_code == 201, removed.text
    assert call(gw, key, "local", "local__pid", {}).status_code == 404

    def stopped() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    eventually(stopped, "the removed server's process still runs", within=10)
    assert "server local exited; starting it again" not in gw.log()


def test_the_config_file_seeds_the_servers_once_and_a_restart_keeps_the_policys(servers, sim, tmp_path):  # noqa: F811
    files, notes = servers
    admin = generate("prod", kind="admin")
    key = generate("dev")

    def start(mcp: dict, port: int | None = None) -> Gateway:
        return start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], port=port,
                             models=[{"name": "m", "upstream": "sim"}], admin_key=admin, env=ENV,
                             identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"], "keys": [key]}],
                             extra={"tools": WEATHER, "mcp": mcp})

    g = start(files_only(files))
    try:
        port = g.port
        assert [s["name"] for s in active_mcp(g)["servers"]] == ["files"]
    finally:
        g.stop()
    more = {"servers": files_only(files)["servers"] + [
        {"name": "notes", "url": notes.url, "credential_env": "NOTES_TOKEN", "pin": "off"}]}
    g = start(more, port)  # the file now names notes too: the stored policy's servers stand
    try:
        assert [s["name"] for s in active_mcp(g)["servers"]] == ["files"]
        assert call(g, key, "notes", "notes__get_weather", {"city": "Oslo"}).json()["error"]["data"]["code"] == \
            "unknown_server"
        assert text(call(g, key, "files", "files__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
    finally:
        g.stop()


def test_with_mcp_tagged_prod_a_new_server_waits_for_another_operator(servers, sim, tmp_path):  # noqa: F811
    files, notes = servers
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}], env=ENV,
                      identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                      extra={"tools": WEATHER, "mcp": files_only(files), "policy": {"prod": ["mcp"]}})
    try:
        made = g.admin("POST", "/admin/identities", json={"name": "mcp-operator", "owner": "ops@example.com",
                                                         "roles": ["operator"]})
        assert made.status_code == 201, made.text
        operator = g.admin("POST", f"/admin/identities/{made.json()['id']}/keys", json={"plane": "control"}).json()["key"]
        as_operator = {"Authorization": f"Bearer {operator}"}
        section = active_mcp(g)
        with_notes = {**section, "pin": {**section["pin"], "notes": "off"}, "servers": section["servers"] + [
            {"name": "notes", "url": notes.url, "credential_env": "NOTES_TOKEN"}]}
        proposed = httpx.post(f"{g.admin_url}/admin/policy/changes", headers=as_operator, timeout=10,
                              json={"sections": {"mcp": with_notes}, "reason": "the notes server"})
        assert proposed.status_code == 202 and proposed.json()["status"] == "pending", proposed.text
        key = g.keys["agent"]
        assert call(g, key, "notes", "notes__get_weather", {"city": "Oslo"}).status_code == 404  # not yet
        cid = proposed.json()["id"]
        own = httpx.post(f"{g.admin_url}/admin/policy/changes/{cid}/approve", json={"reason": "mine"},
                         headers=as_operator, timeout=10)
        assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
        assert g.admin("POST", f"/admin/policy/changes/{cid}/approve", json={"reason": "ok"}).status_code == 200
        assert text(call(g, key, "notes", "notes__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
        assert audit_entries(g, "policy.approve")
        verify_audit(g)
    finally:
        g.stop()


def test_a_changed_server_is_replaced_and_its_calls_go_to_the_new_url_with_the_new_credential(gw, servers):  # noqa: F811
    files, notes = servers
    section = active_mcp(gw)
    key = gw.keys["agent"]
    first = {"name": "moving", "url": files.url, "credential_env": "FILES_TOKEN", "timeout_s": 30}
    added = propose(gw, {**section, "pin": {**section["pin"], "moving": "off"}, "servers": section["servers"] + [first]},
                    "a server that will move")
    assert added.status_code == 201, added.text
    at_files, at_notes = len(files.seen()), len(notes.seen())
    assert text(call(gw, key, "moving", "moving__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
    assert f"Bearer {ENV['FILES_TOKEN']}" in files.seen()[at_files:] and len(notes.seen()) == at_notes
    moved = active_mcp(gw)
    moved["servers"] = [s if s["name"] != "moving" else {**s, "url": notes.url, "credential_env": "NOTES_TOKEN"}
                        for s in moved["servers"]]
    changed = propose(gw, moved, "it moved")
    assert changed.status_code == 201, changed.text
    assert text(call(gw, key, "moving", "moving__get_weather", {"city": "Bergen"})) == "sunny in Bergen"
    assert set(notes.seen()[at_notes:]) == {f"Bearer {ENV['NOTES_TOKEN']}"}  # the new server, its own credential
    eventually(lambda: "mcp: servers files, moving (started moving, retired moving)" in gw.log(), "no replacement logged")
    assert propose(gw, section, "no more moving").status_code == 201
