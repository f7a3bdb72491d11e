"""sluice's own MCP client to Streamable HTTP servers (``sluice/mcp/client.py``): what the gateway gets from it.

Real parts: a sluice process in front of two fastmcp servers (tests/mcp/wire_server.py), one answering every
request in JSON, one as an SSE stream per request (the SDK server's default); the ``mcp`` SDK's client as the
agent. An answer on a stream is read up to its response (the notifications before it do not stop it); a
server that restarts (and so forgets sluice's session) is given a new session and the call goes through; a
call past the server's ``timeout_s`` is ``mcp_upstream_timeout`` and the session goes on; the server's own
JSON-RPC error reaches the agent with its code; the server sees only its own credential."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from support import Gateway, Proc, free_port, start_gateway

HERE = Path(__file__).parent
SECRET = "wire-server-credential-0c41d2a7"
GRANTED = ("get_weather", "sleep", "chatty")
DIRECT = "the-tests-own-direct-client"  # what the test sends when it asks a server itself


class WireServer:
    """tests/mcp/wire_server.py as a process, in ``json`` or ``sse`` mode; ``restart()`` keeps its port."""

    def __init__(self, tmp: Path, mode: str) -> None:
        self.tmp, self.mode, self.port = tmp, mode, free_port()
        self.auth_log = tmp / f"wire-{mode}-auth.log"
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self.runs = 0
        self._start()

    def _start(self) -> None:
        self.runs += 1
        self.proc = Proc([sys.executable, str(HERE / "wire_server.py"), str(self.port), str(self.auth_log), self.mode],
                         self.tmp / f"wire-{self.mode}-{self.runs}.log")
        for _ in range(300):
            try:
                httpx.get(self.url.replace("/mcp", "/_up"), timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(self.proc.log())

    def restart(self) -> None:
        self.proc.stop()
        self._start()

    def seen(self) -> list[str]:
        return self.auth_log.read_text().splitlines() if self.auth_log.exists() else []

    def add(self, kind: str, name: str) -> None:
        httpx.post(self.url.replace("/mcp", "/_add"), json={"kind": kind, "name": name}).raise_for_status()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp-wire")
    got = {"plain": WireServer(tmp, "json"), "stream": WireServer(tmp, "sse")}
    yield got
    for s in got.values():
        s.proc.stop()


def wire_config(servers: dict[str, WireServer], timeout_s: float = 3.0) -> dict:
    return {"mcp": {"servers": [{"name": n, "url": s.url, "credential_env": "WIRE_TOKEN", "pin": "off", "timeout_s": timeout_s}
                                for n, s in servers.items()],
                    # the agent may read any resource: a read of one the server lacks reaches the server
                    "resources": [{"server": n, "identities": ["agent"], "uris": ["*"]} for n in servers]},
            "tools": [{"name": f"{n}__{t}", "risk": "read", "identities": ["agent"]} for n in servers for t in GRANTED]}


@pytest.fixture(scope="module")
def gw(servers, sim, tmp_path_factory):
    g = start_gateway(tmp_path_factory.mktemp("mcp-wire-gw"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                      extra=wire_config(servers), env={"WIRE_TOKEN": SECRET})
    yield g
    g.stop()


def agent(gw: Gateway, server: str) -> Client:
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {gw.keys['agent']}"})
    return Client(streamable_http_client(f"{gw.url}/mcp/{server}", http_client=http), cache=None)


def text_of(result) -> str:
    return "".join(c.text for c in result.content if c.type == "text")


@pytest.mark.parametrize("server", ["plain", "stream"])
async def test_an_answer_in_json_or_on_a_stream_is_read_up_to_its_response(gw, server):
    async with agent(gw, server) as a:
        names = {t.name for t in (await a.list_tools()).tools}
        assert names == {f"{server}__{t}" for t in GRANTED}
        assert text_of(await a.call_tool(f"{server}__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
        # a log message and a progress notification come before the response on the request's stream
        got = await a.call_tool(f"{server}__chatty", {"text": "x"})
        assert text_of(got) == "done: x" and got.structured_content == {"result": "done: x"}


async def test_a_server_that_restarted_gets_a_new_session_and_the_call_goes_through(gw, servers):
    for name in ("plain", "stream"):
        async with agent(gw, name) as a:
            assert text_of(await a.call_tool(f"{name}__get_weather", {"city": "Rome"})) == "sunny in Rome"
            servers[name].restart()  # it forgets every session: sluice's next request is a 404
            assert text_of(await a.call_tool(f"{name}__get_weather", {"city": "Lima"})) == "sunny in Lima"


async def test_a_call_past_the_servers_timeout_is_mcp_upstream_timeout_and_the_next_goes_through(gw):
    async with agent(gw, "stream") as a:
        with pytest.raises(MCPError) as err:
            await a.call_tool("stream__sleep", {"seconds": 30})  # the server's timeout_s is 3
        assert err.value.code == -32011 and err.value.error.data["code"] == "mcp_upstream_timeout"
        assert text_of(await a.call_tool("stream__get_weather", {"city": "Kyiv"})) == "sunny in Kyiv"


async def test_the_servers_own_jsonrpc_error_reaches_the_agent_with_its_code(gw, servers):
    direct_http = create_mcp_http_client(headers={"Authorization": f"Bearer {DIRECT}"})
    async with Client(streamable_http_client(servers["plain"].url, http_client=direct_http), cache=None) as direct:
        with pytest.raises(MCPError) as own:
            await direct.read_resource("docs://nowhere")
    async with agent(gw, "plain") as a:
        with pytest.raises(MCPError) as err:
            await a.read_resource("docs://nowhere")
    assert err.value.code == own.value.code and err.value.error.data["code"] == "mcp_upstream_error"


def test_the_server_sees_only_its_own_credential(gw, servers):
    seen = {line.split(" ", 1)[1] for s in servers.values() for line in s.seen()} - {f"Bearer {DIRECT}"}
    assert seen == {f"Bearer {SECRET}"}, seen  # never the agent's key, never nothing


async def test_a_connection_cut_mid_call_is_tried_once_more_on_a_new_one(servers, sim, tmp_path):
    import asyncio

    from tcp_proxy import TcpProxy

    plain = servers["plain"]
    proxy = TcpProxy(("127.0.0.1", plain.port))
    proxy.start()
    g = start_gateway(tmp_path, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                      extra={"mcp": {"servers": [{"name": "cut", "url": f"http://127.0.0.1:{proxy.port}/mcp",
                                                  "credential_env": "WIRE_TOKEN", "pin": "off", "timeout_s": 30}]},
                             "tools": [{"name": f"cut__{t}", "risk": "read", "identities": ["agent"]} for t in GRANTED]},
                      env={"WIRE_TOKEN": SECRET})
    try:
        async with agent(g, "cut") as a:
            call = asyncio.ensure_future(a.call_tool("cut__sleep", {"seconds": 3}))
            await asyncio.sleep(1.0)
            proxy.start()  # already forwarding: every live connection is cut, new ones are taken
            assert text_of(await call) == "slept 3.0"  # the call was sent again, on a new connection
            assert text_of(await a.call_tool("cut__get_weather", {"city": "Bern"})) == "sunny in Bern"
    finally:
        g.stop()
        proxy.close()
