"""The MCP gateway's call path (issue 25 items 1, 7, 8): sessions across replicas and restarts, limits on tool
calls, one record per call, metrics by server/tool/decision, and the federated ``/mcp`` endpoint.

Real parts throughout: sluice processes, fastmcp servers over HTTP (tests/mcp/upstream_server.py), the
``mcp`` SDK's client as the agent, Postgres and Redis for the replica test."""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import httpx
import pytest
import redis
from mcp.shared.exceptions import MCPError

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from sluice.identity import generate
from support import Gateway, start_gateway
from store.pg_databases import drop_pg_database, fresh_pg_database
from test_mcp_gateway import INIT, LIST, TOOLS, UPSTREAM_SECRET, SECRET, ToolServer, agent, post, session_of, text_of

REDIS_URL = os.environ.get("SLUICE_TEST_REDIS", "redis://127.0.0.1:6379/0")
NOTES_SECRET = "notes-server-credential-51b0d4e8"
PER_IDENTITY = 10  # tools/call per minute for each identity
WHO = ["agent", "viewer", "busy"]
CALL_TOOLS = [{**t, "identities": WHO} if t["name"] == "files__get_weather" else t for t in TOOLS] + [
    {"name": "notes__get_weather", "risk": "read", "identities": WHO},
    {"name": "notes__read_config", "risk": "read", "identities": ["agent"]},
    {"name": "files__fetch_page", "risk": "read", "identities": ["agent"]},
]


def federated(gw: Gateway, credential: str) -> Client:
    """The SDK's client on the federated endpoint ``/mcp``."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {credential}"})
    return Client(streamable_http_client(f"{gw.url}/mcp", http_client=http), cache=None)


def call_body(name: str, args: dict, req_id: int = 7) -> bytes:
    import json
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "method": "tools/call",
                       "params": {"name": name, "arguments": args}}).encode()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    files, notes = ToolServer(tmp_path_factory.mktemp("files")), ToolServer(tmp_path_factory.mktemp("notes"))
    yield files, notes
    files.proc.stop()
    notes.proc.stop()


def two_servers(files: ToolServer, notes: ToolServer, **mcp) -> dict:
    # pin: off - these tests are about calls, not definitions (tests/mcp/test_mcp_pins.py pins)
    return {"servers": [{"name": "files", "url": files.url, "credential_env": "FILES_TOKEN", "pin": "off"},
                        {"name": "notes", "url": notes.url, "credential_env": "NOTES_TOKEN", "pin": "off"}], **mcp}


ENV = {"FILES_TOKEN": UPSTREAM_SECRET, "NOTES_TOKEN": NOTES_SECRET}


@pytest.fixture(scope="module")
def gw(servers, sim, tmp_path_factory):
    files, notes = servers
    g = start_gateway(tmp_path_factory.mktemp("mcp-calls"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": n, "owner": "team@example.com", "models": ["*"]} for n in WHO],
                      extra={"mcp": two_servers(files, notes, limits={"calls_per_minute_per_identity": PER_IDENTITY}),
                             "tools": CALL_TOOLS}, env=ENV)
    yield g
    g.stop()


async def test_the_federated_endpoint_lists_every_servers_tools_and_routes_calls_by_namespace(gw, servers):
    files, notes = servers
    before_files, before_notes = len(files.seen()), len(notes.seen())
    async with federated(gw, gw.keys["agent"]) as a:
        names = {t.name for t in (await a.list_tools()).tools}
        assert {"files__get_weather", "files__read_config", "notes__get_weather", "notes__read_config"} <= names
        assert "files__delete_repo" not in names and "notes__dump" not in names  # the registry still decides
        assert text_of(await a.call_tool("notes__get_weather", {"city": "Bergen"})) == "sunny in Bergen"
        with pytest.raises(MCPError) as err:
            await a.call_tool("elsewhere__get_weather", {"city": "Bergen"})
        assert err.value.error.data["code"] == "unknown_tool"
    # the call went to the notes server, with the notes server's own credential
    assert notes.seen()[before_notes:] and set(notes.seen()[before_notes:]) == {f"Bearer {NOTES_SECRET}"}
    assert set(files.seen()[before_files:]) <= {f"Bearer {UPSTREAM_SECRET}"}
    async with federated(gw, gw.keys["viewer"]) as v:
        assert {t.name for t in (await v.list_tools()).tools} == {"files__get_weather", "notes__get_weather"}
    # a /mcp session is no session on /mcp/files
    sid = session_of_path(gw, gw.keys["agent"], "")
    assert post_path(gw, gw.keys["agent"], LIST, sid, "/mcp/files").status_code == 404
    # each endpoint has its own RFC 9728 document, at its own path
    meta = httpx.get(f"{gw.url}/.well-known/oauth-protected-resource/mcp").json()
    assert meta["resource"] == f"{gw.url}/mcp"
    assert httpx.get(f"{gw.url}/.well-known/oauth-protected-resource/mcp/files").json()["resource"] == f"{gw.url}/mcp/files"
    r = post_path(gw, None, INIT, None, "/mcp")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == f'Bearer resource_metadata="{gw.url}/.well-known/oauth-protected-resource/mcp"'


def post_path(gw: Gateway, key: str | None, body: bytes, session: str | None, path: str,
              headers: dict | None = None) -> httpx.Response:
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **(headers or {})}
    if key:
        h["Authorization"] = f"Bearer {key}"
    if session:
        h["Mcp-Session-Id"] = session
    return httpx.post(gw.url + path, content=body, headers=h, timeout=30)


def session_of_path(gw: Gateway, key: str, path: str) -> str:
    r = post_path(gw, key, INIT, None, path or "/mcp")
    assert r.status_code == 200, r.text
    return r.headers["mcp-session-id"]


async def test_a_per_identity_call_limit_is_a_jsonrpc_error_with_retry_after_and_others_go_on(gw):
    async with agent(gw, gw.keys["busy"]) as b, agent(gw, gw.keys["viewer"]) as v:
        for _ in range(PER_IDENTITY):
            assert text_of(await b.call_tool("files__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
        with pytest.raises(MCPError) as err:
            await b.call_tool("files__get_weather", {"city": "Oslo"})
        assert err.value.code == -32013 and err.value.error.data["code"] == "rate_limit_exceeded"
        assert 0 < err.value.error.data["retry_after"] <= 60 and "mcp-identity" in err.value.error.message
        assert (await b.list_tools()).tools  # listing is not a call
        assert text_of(await v.call_tool("files__get_weather", {"city": "Rome"})) == "sunny in Rome"  # another identity
    rows = decisions(gw, lambda r: r["decision"] == "limited")
    assert rows and rows[0]["upstream_status"] is None


def decisions(gw: Gateway, want, at_least: int = 1) -> list[dict]:
    for _ in range(50):  # rows are written off the request path
        rows = [r for r in gw.admin("GET", "/admin/tool-decisions?limit=500").json()["data"] if want(r)]
        if len(rows) >= at_least:
            return rows
        time.sleep(0.1)
    raise AssertionError("no such tool decision rows")


async def test_every_call_leaves_one_decision_row_linked_to_the_model_tool_call_that_proposed_it(gw):
    proposed = f"call_{uuid.uuid4().hex[:12]}"
    async with agent(gw, gw.keys["agent"]) as a:
        await a.call_tool("files__read_config", {}, meta={"sluice/tool_call_id": proposed})
        with pytest.raises(MCPError):
            await a.call_tool("files__delete_repo", {"name": "prod"}, meta={"sluice/tool_call_id": proposed + "-no"})
    sid = session_of(gw, gw.keys["agent"])
    by_header = proposed + "-hdr"
    r = post_path(gw, gw.keys["agent"], call_body("files__get_weather", {"city": "Lima"}), sid, "/mcp/files",
                  {"x-sluice-tool-call-id": by_header})
    assert r.status_code == 200, r.text
    [ran] = decisions(gw, lambda r: r["tool_call_id"] == proposed)
    assert (ran["model"], ran["tool"], ran["decision"], ran["upstream_status"]) == ("mcp:files", "files__read_config", "allow", "ok")
    assert ran["latency_ms"] > 0 and ran["result_bytes"] > 50 and len(ran["args_sha256"]) == 64
    assert "[REDACTED:" in ran["result_masked"] and SECRET not in ran["result_masked"] and "eu-west-1" in ran["result_masked"]
    assert ran["identity_id"] and ran["policy_version"] is not None
    [refused] = decisions(gw, lambda r: r["tool_call_id"] == proposed + "-no")
    assert (refused["decision"], refused["reason"], refused["upstream_status"], refused["result_bytes"]) == (
        "block", "tool_not_allowed", None, None)
    [hdr] = decisions(gw, lambda r: r["tool_call_id"] == by_header)
    assert hdr["decision"] == "allow" and hdr["tool"] == "files__get_weather" and "sunny in Lima" in hdr["result_masked"]


async def test_metrics_count_calls_by_server_tool_and_decision(gw):
    async with federated(gw, gw.keys["agent"]) as a:
        await a.call_tool("notes__read_config", {})
        with pytest.raises(MCPError):
            await a.call_tool("notes__delete_repo", {"name": "x"})
    text = gw.admin("GET", "/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith("sluice_mcp_calls_total{")]
    assert any('server="notes"' in ln and 'tool="notes__read_config"' in ln and 'decision="allow"' in ln
               and float(ln.rsplit(" ", 1)[1]) >= 1 for ln in lines), lines
    assert any('server="notes"' in ln and 'tool="notes__delete_repo"' in ln and 'decision="block"' in ln for ln in lines), lines
    assert any(ln.startswith('sluice_mcp_call_duration_seconds_count{') and 'server="notes"' in ln
               for ln in text.splitlines())


async def test_an_injection_in_a_tool_result_is_flagged_to_the_agent_and_recorded(gw):
    async with agent(gw, gw.keys["agent"]) as a:
        got = await a.call_tool("files__fetch_page", {}, meta={"sluice/tool_call_id": "call_inj"})
        assert got.meta["sluice/injection"] >= 0.5 and "Weather: mild" in text_of(got)
        clean = await a.call_tool("files__dump", {"size": 10})
        assert not (clean.meta or {}).get("sluice/injection")
    [row] = decisions(gw, lambda r: r["tool_call_id"] == "call_inj")
    assert row["decision"] == "allow" and "injection" in row["reason"]
    assert "looks like instructions to the model" in gw.log()


def test_one_session_across_two_replicas_on_postgres_and_redis_through_a_restart_and_a_delete(servers, sim, tmp_path_factory):
    files, notes = servers
    pg = asyncio.run(fresh_pg_database())
    tmp = tmp_path_factory.mktemp("mcp-replicas")
    prefix = f"m{uuid.uuid4().hex[:8]}:"
    key = generate("dev")
    common = dict(upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "m", "upstream": "sim"}],
                  identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"], "keys": [key]}],
                  env=ENV, admin_key=generate("prod", kind="admin"),
                  extra={"store": {"url": pg}, "tools": CALL_TOOLS,
                         "limits": {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix},
                         "mcp": two_servers(files, notes, limits={"calls_per_minute_per_identity": 1000,
                                                                   "concurrency_per_server": 8})})
    for side in ("a", "b"):
        (tmp / side).mkdir()
    one, two = start_gateway(tmp / "a", **common), start_gateway(tmp / "b", **common)
    try:
        sid = session_of(one, key)

        def call(g: Gateway, city: str) -> httpx.Response:
            return post(g, key, call_body("files__get_weather", {"city": city}), sid)

        for g, city in ((two, "Lima"), (one, "Quito"), (two, "Cusco")):
            r = call(g, city)
            assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == f"sunny in {city}", r.text
        port = two.port
        two.stop()
        two = start_gateway(tmp / "b", **common, port=port)  # the same replica, restarted mid-session
        for g, city in ((two, "Arica"), (one, "Iquique")):
            assert call(g, city).json()["result"]["content"][0]["text"] == f"sunny in {city}"
        assert redis.Redis.from_url(REDIS_URL).keys(prefix + "mcp-*")  # the tool-call limits counted on Redis
        ended = httpx.delete(f"{one.url}/mcp/files", headers={"Authorization": f"Bearer {key}", "Mcp-Session-Id": sid})
        assert ended.status_code == 200, ended.text
        assert post(one, key, LIST, sid).status_code == 404  # on the replica that ended it: at once
        deadline = time.monotonic() + 3.0  # on the other: within mcp.ended_check_s (1 s)
        while post(two, key, LIST, sid).status_code != 404:
            assert time.monotonic() < deadline, "the other replica still serves an ended session"
            time.sleep(0.1)
        two.stop()
        two = start_gateway(tmp / "b", **common, port=port)  # and a restart does not bring it back
        assert post(two, key, LIST, sid).status_code == 404
        assert post(two, key, LIST, session_of(two, key)).status_code == 200  # a new one is fine
    finally:
        one.stop()
        two.stop()
        asyncio.run(drop_pg_database(pg))


async def test_each_identity_has_its_own_budget_on_one_tool_counted_exactly_across_two_replicas(servers, sim,
                                                                                                tmp_path_factory):
    """``calls_per_minute_per_identity_per_tool``: one identity's calls to one tool, on Redis shared by two replicas."""
    files, notes = servers
    tmp = tmp_path_factory.mktemp("mcp-per-tool")
    keys = {n: generate("dev") for n in ("agent", "viewer")}
    common = dict(upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "m", "upstream": "sim"}],
                  identities=[{"name": n, "owner": "team@example.com", "models": ["*"], "keys": [k]} for n, k in keys.items()],
                  env=ENV, admin_key=generate("prod", kind="admin"),
                  extra={"tools": CALL_TOOLS, "mcp": two_servers(files, notes, limits={"calls_per_minute_per_identity_per_tool": 3}),
                         "limits": {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": f"t{uuid.uuid4().hex[:8]}:"}})
    one, two = start_gateway(tmp, **common), start_gateway(tmp, **common)  # one SQLite store, one Redis
    try:
        async with agent(one, keys["agent"]) as a1, agent(two, keys["agent"]) as a2:
            for client in (a1, a2, a1):  # three calls of the agent's budget of three, on either replica
                assert text_of(await client.call_tool("files__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
            with pytest.raises(MCPError) as err:
                await a2.call_tool("files__get_weather", {"city": "Oslo"})
            assert err.value.code == -32013 and "mcp-identity-tool" in err.value.error.message
            assert 0 < err.value.error.data["retry_after"] <= 60
            assert text_of(await a1.call_tool("files__read_config", {}))  # another tool: a budget of its own
        async with agent(two, keys["viewer"]) as v:  # another identity, the same tool: its own three
            for _ in range(3):
                assert text_of(await v.call_tool("files__get_weather", {"city": "Rome"})) == "sunny in Rome"
            with pytest.raises(MCPError) as err:
                await v.call_tool("files__get_weather", {"city": "Rome"})
            assert err.value.error.data["code"] == "rate_limit_exceeded"
    finally:
        one.stop()
        two.stop()


def test_a_busy_agent_queued_on_a_server_at_capacity_does_not_make_another_wait_behind_its_backlog(servers, sim,
                                                                                                 tmp_path_factory):
    """A server with capacity 1 and a queue of 6: one identity sends five slow calls at once, another one call while
    they wait; the fair queue admits the other identity's call next (the fewest calls admitted go first), where
    first-come-first-served would run it last. A full share of the queue is -32013 capacity_exceeded."""
    files, notes = servers
    mcp = two_servers(files, notes)
    mcp["servers"][0]["capacity"] = {"concurrency": 1, "queue": 6, "queue_timeout_s": 60}
    slow = [{"name": "files__slow", "risk": "read", "identities": WHO}]
    g = start_gateway(tmp_path_factory.mktemp("mcp-fair"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": n, "owner": "team@example.com", "models": ["*"]} for n in WHO],
                      extra={"mcp": mcp, "tools": slow}, env=ENV)
    try:
        sessions = {n: session_of_path(g, g.keys[n], "/mcp/files") for n in ("busy", "agent")}
        done: list[str] = []

        async def call(who: str, tag: str, client: httpx.AsyncClient) -> dict:
            h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                 "Authorization": f"Bearer {g.keys[who]}", "Mcp-Session-Id": sessions[who]}
            r = await client.post(f"{g.url}/mcp/files", headers=h, timeout=60,
                                  content=call_body("files__slow", {"seconds": 1.5, "tag": tag}))
            assert r.status_code == 200, r.text
            if "result" in r.json():
                done.append(tag)  # in the order the calls came back done
            return r.json()

        async def run() -> list[dict]:
            async with httpx.AsyncClient(limits=httpx.Limits(max_connections=20)) as client:
                backlog = [asyncio.create_task(call("busy", f"busy-{i}", client)) for i in range(5)]
                await asyncio.sleep(0.5)  # the first runs (1.5 s), four wait
                mine = asyncio.create_task(call("agent", "agent", client))
                await asyncio.sleep(0.2)
                # busy holds four of the queue's six places, agent one: one more of busy's fills it, the next is
                # refused (the queue is shared fairly: agent's one place was never at risk)
                more = [asyncio.create_task(call("busy", f"busy-more-{i}", client)) for i in range(2)]
                return await asyncio.gather(*backlog, mine, *more)

        answers = asyncio.run(run())
        # busy-0 runs; at its end busy and agent have had one call each admitted (agent starts level: waiting earns
        # no credit) and the tie goes to the earlier line, so agent's call is the third done; first come, first
        # served would have made it the sixth
        assert done.index("agent") == 2, done
        refused = [a for a in answers if "error" in a]
        assert len(refused) == 1 and refused[0]["error"]["code"] == -32013, answers
        assert refused[0]["error"]["data"]["code"] == "capacity_exceeded", refused
        assert "files is at capacity" in refused[0]["error"]["message"]
    finally:
        g.stop()
