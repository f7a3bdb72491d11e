"""Streamable HTTP's other half (issue 25 item 1): the server-to-client stream (GET /mcp and /mcp/{server}) and
an SSE answer to a POST that asks for one.

Real parts: a sluice in front of a fastmcp server (tests/mcp/wire_server.py) that adds a tool at run time and
tells its sessions; the ``mcp`` SDK's client as the agent, its ``message_handler`` receiving what arrives on
the stream; raw httpx for the bounds, the refusals and the shutdown."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from support import Gateway, start_gateway
from test_mcp_client import SECRET, WireServer, text_of

ADDED = [f"added_{i}" for i in range(8)]
TOOLS = [{"name": f"plain__{t}", "risk": "read", "identities": ["agent", "other"]} for t in ("get_weather", *ADDED)]
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
BOTH = "application/json, text/event-stream"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = WireServer(tmp_path_factory.mktemp("mcp-streams-upstream"), "json")
    yield s
    s.proc.stop()


def config(server: WireServer, **streams) -> dict:
    return {"mcp": {"servers": [{"name": "plain", "url": server.url, "credential_env": "WIRE_TOKEN", "pin": "off"}],
                    "streams": {"per_identity": 2, "total": 3, "keepalive_s": 0.5, **streams}},
            "tools": TOOLS}


def gateway(server: WireServer, sim, tmp, **streams) -> Gateway:
    return start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                         models=[{"name": "m", "upstream": "sim"}],
                         identities=[{"name": n, "owner": "team@example.com", "models": ["*"]} for n in ("agent", "other")],
                         extra=config(server, **streams), env={"WIRE_TOKEN": SECRET})


@pytest.fixture(scope="module")
def gw(server, sim, tmp_path_factory):
    g = gateway(server, sim, tmp_path_factory.mktemp("mcp-streams-gw"))
    yield g
    g.stop()


def session(gw: Gateway, who: str = "agent", path: str = "/mcp/plain") -> dict[str, str]:
    """A new session's headers (for raw requests)."""
    auth = {"Authorization": f"Bearer {gw.keys[who]}", "Accept": BOTH}
    r = httpx.post(gw.url + path, headers=auth, json=INIT)
    assert r.status_code == 200, r.text
    return {**auth, "Mcp-Session-Id": r.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-06-18"}


class Listener:
    """A raw GET stream read on a thread: its status, the lines it carried, whether it ended cleanly."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.status: int | None = None
        self.body = b""
        self.lines: list[str] = []
        self.ended_cleanly: bool | None = None
        self.opened = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.opened.wait(30)

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers={**self.headers, "Accept": "text/event-stream"}, timeout=60) as r:
                if r.status_code != 200:
                    self.body = r.read()
                self.status = r.status_code
                self.opened.set()
                if r.status_code != 200:
                    return
                for line in r.iter_lines():
                    self.lines.append(line)
            self.ended_cleanly = True
        except httpx.HTTPError:
            self.ended_cleanly = False
        finally:
            self.opened.set()

    def end(self) -> None:
        """End the session (and so the stream), and wait for the stream to end."""
        assert httpx.delete(self.url, headers=self.headers).status_code == 200
        self.join()

    def join(self, timeout: float = 30) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"


def agent(gw: Gateway, path: str, heard: list[str]) -> Client:
    async def handler(message) -> None:
        method = getattr(message, "method", None)
        if method:
            heard.append(method)

    http = create_mcp_http_client(headers={"Authorization": f"Bearer {gw.keys['agent']}"})
    return Client(streamable_http_client(gw.url + path, http_client=http), cache=None, message_handler=handler)


async def hear(method: str, act, *heard: list[str], tries: int = 8) -> None:
    """Do ``act`` until ``method`` arrived to each agent (their streams open in the background after initialize)."""
    for i in range(tries):
        done = act(i)
        if asyncio.iscoroutine(done):
            await done
        for _ in range(40):
            if all(method in h for h in heard):
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{method} never arrived: {heard}")


async def test_the_agent_hears_tools_list_changed_when_the_server_adds_a_tool_and_then_lists_it(gw, server):
    heard_server: list[str] = []
    heard_federated: list[str] = []
    added: list[str] = []

    def add(i: int) -> None:
        name = ADDED[len(added)]
        server.add("tool", name)
        added.append(name)

    async with agent(gw, "/mcp/plain", heard_server) as a, agent(gw, "/mcp", heard_federated) as f:
        await hear("notifications/tools/list_changed", add, heard_server, heard_federated)
        names = {t.name for t in (await a.list_tools()).tools}
        assert {f"plain__{n}" for n in added} <= names
        assert {f"plain__{n}" for n in added} <= {t.name for t in (await f.list_tools()).tools}


async def test_the_agent_hears_when_a_new_policy_version_is_active(gw):
    heard: list[str] = []

    def change(i: int) -> None:
        rule = {"name": f"roomy-{i}", "per": ["identity"], "requests_per_minute": 1_000_000 + i}
        r = gw.admin("POST", "/admin/policy/changes", json={"sections": {"limits": {"rules": [rule]}}, "reason": f"t{i}"})
        assert r.status_code in (200, 201), r.text

    async with agent(gw, "/mcp/plain", heard) as a:
        await a.list_tools()
        await hear("notifications/tools/list_changed", change, heard)


def test_initialize_advertises_list_changed(gw):
    r = httpx.post(gw.url + "/mcp/plain", headers={"Authorization": f"Bearer {gw.keys['agent']}", "Accept": BOTH}, json=INIT)
    caps = r.json()["result"]["capabilities"]
    assert caps["tools"]["listChanged"] and caps["resources"]["listChanged"] and caps["prompts"]["listChanged"]


def test_a_post_that_prefers_an_event_stream_gets_its_answer_as_one_sse_event(gw):
    headers = session(gw)
    call = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "plain__get_weather",
                                                                          "arguments": {"city": "Oslo"}}}
    for accept, streamed in [(BOTH, False), ("text/event-stream", True),
                             ("application/json;q=0.5, text/event-stream", True), ("application/json", False)]:
        r = httpx.post(gw.url + "/mcp/plain", headers={**headers, "Accept": accept}, json=call)
        assert r.status_code == 200, (accept, r.text)
        if streamed:
            assert r.headers["content-type"].startswith("text/event-stream"), accept
            events = [e for e in r.text.split("\n\n") if e.strip()]
            assert len(events) == 1 and events[0].startswith("event: message\ndata: "), r.text
            message = json.loads(events[0].split("data: ", 1)[1])
        else:
            assert r.headers["content-type"].startswith("application/json"), accept
            message = r.json()
        assert message["id"] == 5 and message["result"]["content"][0]["text"] == "sunny in Oslo"
    refused = httpx.post(gw.url + "/mcp/plain", headers={**headers, "Accept": "text/event-stream"},
                         json={**call, "params": {"name": "plain__delete_everything", "arguments": {}}})
    assert refused.headers["content-type"].startswith("text/event-stream")  # a JSON-RPC error is an answer too
    assert json.loads(refused.text.split("data: ", 1)[1])["error"]["code"] == -32010


def test_a_stream_needs_a_session_of_its_own_identity_and_accepts_event_stream(gw):
    agent_s, other_s = session(gw), session(gw, "other")
    url = gw.url + "/mcp/plain"
    no_session = httpx.get(url, headers={"Authorization": agent_s["Authorization"], "Accept": "text/event-stream"})
    assert no_session.status_code == 400 and no_session.json()["error"]["data"]["code"] == "missing_session"
    theirs = httpx.get(url, headers={**agent_s, "Mcp-Session-Id": other_s["Mcp-Session-Id"], "Accept": "text/event-stream"})
    assert theirs.status_code == 404 and theirs.json()["error"]["data"]["code"] == "unknown_session"
    json_only = httpx.get(url, headers={**agent_s, "Accept": "application/json"})
    assert json_only.status_code == 406 and json_only.json()["error"]["data"]["code"] == "not_acceptable"
    elsewhere = httpx.get(gw.url + "/mcp", headers={**agent_s, "Accept": "text/event-stream"})  # a /mcp/plain session
    assert elsewhere.status_code == 404
    assert httpx.get(url, headers={"Accept": "text/event-stream"}).status_code == 401


def test_streams_are_bounded_per_identity_and_in_total_and_keep_alive(gw):
    url = gw.url + "/mcp/plain"
    mine = [Listener(url, session(gw)) for _ in range(2)]
    theirs: list[Listener] = []
    try:
        assert [m.status for m in mine] == [200, 200]
        third = Listener(url, session(gw))
        assert third.status == 429 and third.body
        err = json.loads(third.body)["error"]
        assert err["data"]["code"] == "too_many_streams" and "mcp.streams.per_identity" in err["message"]
        theirs.append(Listener(url, session(gw, "other")))  # the third of the replica's three
        assert theirs[0].status == 200
        full = Listener(url, session(gw, "other"))
        assert full.status == 503 and json.loads(full.body)["error"]["data"]["code"] == "streams_full"
        # a quiet stream carries keep-alive comments (keepalive_s is 0.5 here)
        for _ in range(100):
            if any(line.startswith(": keep-alive") for line in mine[0].lines):
                break
            threading.Event().wait(0.1)
        assert any(line.startswith(": keep-alive") for line in mine[0].lines), mine[0].lines
    finally:
        for listener in (*mine, *theirs):
            if listener.status == 200:
                listener.end()


def test_ending_a_session_ends_its_stream_and_frees_its_place(gw):
    url = gw.url + "/mcp/plain"
    first = [Listener(url, session(gw)) for _ in range(2)]
    assert [f.status for f in first] == [200, 200]
    for f in first:
        f.end()
        assert f.ended_cleanly
    again = [Listener(url, session(gw)) for _ in range(2)]  # both of the agent's places are free again
    try:
        assert [a.status for a in again] == [200, 200]
    finally:
        for a in again:
            if a.status == 200:
                a.end()


def test_open_streams_end_cleanly_when_sluice_shuts_down(server, sim, tmp_path):
    g = gateway(server, sim, tmp_path, keepalive_s=30)
    try:
        listener = Listener(g.url + "/mcp/plain", session(g))
        assert listener.status == 200
    finally:
        code = g.stop()
    listener.join()
    assert listener.ended_cleanly and code == 0
    assert "still running after" not in g.log()  # the drain did not wait on the stream


async def test_the_agent_hears_when_a_tool_it_sees_is_quarantined_though_the_server_said_nothing(sim, tmp_path):
    from test_mcp_gateway import ToolServer
    from test_mcp_pins import sha, upstream_definitions

    files = ToolServer(tmp_path)  # its /_describe changes a description and tells no session
    pinned = {"files__get_weather": sha((await upstream_definitions(files.url))["get_weather"])}
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                      extra={"mcp": {"servers": [{"name": "files", "url": files.url}], "pins": pinned, "pin_recheck_s": 0},
                             "tools": [{"name": "files__get_weather", "risk": "read", "identities": ["agent"]}]})
    try:
        heard: list[str] = []
        async with agent(g, "/mcp/files", heard) as a:
            assert {t.name for t in (await a.list_tools()).tools} == {"files__get_weather"}

            def rug_pull(i: int) -> None:  # a new description each time: a definition not quarantined before
                httpx.post(files.url.replace("/mcp", "/_describe"),
                           json={"tool": "get_weather", "description": f"The weather, version {i}."}).raise_for_status()
                post = httpx.post(g.url + "/mcp/files", json=INIT, headers={"Authorization": f"Bearer {g.keys['agent']}",
                                                                            "Accept": BOTH})
                sid = post.headers["mcp-session-id"]  # another session lists: sluice sees the change there
                httpx.post(g.url + "/mcp/files", json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
                           headers={"Authorization": f"Bearer {g.keys['agent']}", "Accept": BOTH, "Mcp-Session-Id": sid})

            await hear("notifications/tools/list_changed", rug_pull, heard)
            assert (await a.list_tools()).tools == []  # listed again: the changed tool is hidden
    finally:
        g.stop()
        files.proc.stop()


async def test_a_stdio_servers_list_changed_reaches_the_agents_stream(sim, tmp_path):
    from test_mcp_stdio import gateway as stdio_gateway

    g = stdio_gateway(tmp_path, sim, allow_unsandboxed=True)  # the sandbox is not what this is about
    try:
        heard: list[str] = []
        async with agent(g, "/mcp/local", heard) as a:
            async def grow(i: int) -> None:
                assert text_of(await a.call_tool("local__grow", {"name": f"grown_{i}"})) == f"added grown_{i}"

            await hear("notifications/tools/list_changed", grow, heard)
            assert "local__grown_0" in {t.name for t in (await a.list_tools()).tools}
    finally:
        g.stop()
