"""Resource subscriptions through the MCP gateway (issue 25 item 1: ``resources/subscribe`` and
``notifications/resources/updated``): the ``mcp`` SDK's client as the agent, a real sluice in front of the fastmcp
server of ``upstream_server.py``, whose ``live://{name}`` resources change when the test touches them.

A session that subscribed to a URI hears its updates on its GET stream; a session that did not, and another
identity, do not; a URI the caller may not read cannot be subscribed to; unsubscribing stops the relays, and sluice
keeps one subscription of its own upstream, which it ends when the last session leaves; a grant taken away stops
the relays. Across replicas: with Redis (``limits.backend: redis``) a subscription taken on one replica is heard by
the session's stream on another and can be left there; without it, only on the replica that took it (as the README
says)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from sluice.identity import generate
from support import Gateway, start_gateway
from test_mcp_calls import REDIS_URL
from test_mcp_gateway import UPSTREAM_SECRET, mcp_extra, tools_server  # noqa: F401 - a fixture
from test_mcp_streams import Listener

UPDATED = "notifications/resources/updated"
IDENTITIES = [{"name": n, "owner": "team@example.com", "models": ["*"]} for n in ("reader", "other")]
GRANTS = [{"server": "files", "identities": ["reader"], "uris": ["live://*", "docs://*"]},
          {"server": "files", "identities": ["other"], "uris": ["live://public"]}]

pytestmark = pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed")  # the SDK's, for 2026 servers


def extra(tools_server) -> dict:  # noqa: F811
    e = mcp_extra(tools_server)
    e["mcp"]["resources"] = GRANTS
    e["mcp"]["streams"] = {"keepalive_s": 1}
    return e


@pytest.fixture(scope="module")
def gw(tools_server, sim, tmp_path_factory):  # noqa: F811
    g = start_gateway(tmp_path_factory.mktemp("mcp-subs"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}], identities=IDENTITIES, extra=extra(tools_server),
                      env={"FILES_TOKEN": UPSTREAM_SECRET})
    yield g
    g.stop()


class Agent:
    """The SDK's client on a path of sluice, and the updates its stream carried (their URIs, in order)."""

    def __init__(self, gw: Gateway, who: str, path: str = "/mcp/files") -> None:
        self.updates: list[str] = []

        async def handler(message) -> None:
            if getattr(message, "method", None) == UPDATED:
                self.updates.append(str(message.params.uri))

        http = create_mcp_http_client(headers={"Authorization": f"Bearer {gw.keys[who]}"})
        self.client = Client(streamable_http_client(gw.url + path, http_client=http), cache=None,
                             message_handler=handler)

    async def __aenter__(self) -> Client:
        return await self.client.__aenter__()

    async def __aexit__(self, *exc) -> None:
        await self.client.__aexit__(*exc)


def upstream(tools_server) -> dict:  # noqa: F811
    """What the tool server holds: {"subscribed": {uri: sessions}, "calls": [...]}."""
    return httpx.get(tools_server.url.replace("/mcp", "/_subscriptions")).json()


def touch(tools_server, uri: str) -> None:  # noqa: F811
    httpx.post(tools_server.url.replace("/mcp", "/_touch"), json={"uri": uri}).raise_for_status()


async def heard(tools_server, uri: str, *agents: Agent, tries: int = 10) -> None:  # noqa: F811
    """Touch ``uri`` until each agent heard it changed once more (their streams open in the background)."""
    before = [a.updates.count(uri) for a in agents]
    for _ in range(tries):
        touch(tools_server, uri)
        for _ in range(30):
            if all(a.updates.count(uri) > n for a, n in zip(agents, before)):
                return
            await asyncio.sleep(0.1)
    raise AssertionError(f"{uri} never arrived: {[a.updates for a in agents]}")


async def test_a_subscribed_session_hears_its_resource_change_and_no_other_session_or_identity_does(gw, tools_server):  # noqa: F811
    mine, federated, idle, theirs = (Agent(gw, "reader"), Agent(gw, "reader", "/mcp"), Agent(gw, "reader"),
                                     Agent(gw, "other"))
    async with mine as a, federated as f, idle as i, theirs as o:
        await a.subscribe_resource("live://a")
        await f.subscribe_resource("live://a")  # /mcp finds the server as a read does (its live://{name} template)
        await o.subscribe_resource("live://public")
        await i.list_resources()
        await heard(tools_server, "live://a", mine, federated)
        await heard(tools_server, "live://public", theirs)  # its stream is open, and carries only its own URI
        assert (await a.read_resource("live://a")).contents[0].text.startswith("a changed")
        await i.subscribe_resource("live://public")
        await heard(tools_server, "live://public", idle)
        await asyncio.sleep(0.3)
    assert set(mine.updates) == set(federated.updates) == {"live://a"}
    assert set(theirs.updates) == set(idle.updates) == {"live://public"}  # never live://a
    got = upstream(tools_server)  # two sessions on live://a, one upstream subscription: sluice's
    assert got["calls"].count("subscribe live://a") == 1, got


async def test_a_subscription_to_a_uri_the_caller_may_not_read_is_refused(gw, tools_server):  # noqa: F811
    async with Agent(gw, "other") as o:
        for uri in ("live://secret", "docs://readme"):
            with pytest.raises(MCPError) as err:
                await o.subscribe_resource(uri)
            assert err.value.code == -32010 and err.value.error.data["reason"] == "resource_not_allowed"
            assert f"The resource {uri} cannot be subscribed to" in err.value.error.message
    assert "subscribe live://secret" not in upstream(tools_server)["calls"]


async def test_unsubscribing_stops_the_relays_and_the_last_session_to_leave_ends_sluices_subscription(gw, tools_server):  # noqa: F811
    first, second = Agent(gw, "reader"), Agent(gw, "reader")
    async with first as a:
        async with second as b:
            await a.subscribe_resource("live://u")
            await b.subscribe_resource("live://u")
            await heard(tools_server, "live://u", first, second)
            await a.unsubscribe_resource("live://u")
            kept = len(first.updates)
            await heard(tools_server, "live://u", second)
            await heard(tools_server, "live://u", second)
            assert len(first.updates) == kept  # unsubscribed: nothing more
            calls = upstream(tools_server)["calls"]
            assert calls.count("subscribe live://u") == 1 and "unsubscribe live://u" not in calls  # b still holds it
        # b's session ended (the SDK's client DELETEs it on the way out): nobody holds live://u, nor does sluice
        for _ in range(100):
            if "unsubscribe live://u" in upstream(tools_server)["calls"]:
                break
            await asyncio.sleep(0.1)
        assert "unsubscribe live://u" in upstream(tools_server)["calls"]
        assert "live://u" not in upstream(tools_server)["subscribed"]


async def test_when_the_server_restarts_sluice_subscribes_its_new_session_again(gw, tools_server):  # noqa: F811
    mine = Agent(gw, "reader")
    async with mine as a:
        await a.subscribe_resource("live://r")
        await heard(tools_server, "live://r", mine)
        tools_server.restart()  # it forgets sluice's session and its subscription
        await heard(tools_server, "live://r", mine, tries=30)  # sluice's stream comes back, then the sweep (5 s)
        assert upstream(tools_server)["calls"] == ["subscribe live://r"]  # this server's calls since its restart


def test_initialize_advertises_subscribe(gw):
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    for path in ("/mcp/files", "/mcp"):
        r = httpx.post(gw.url + path, json=init, headers={"Authorization": f"Bearer {gw.keys['reader']}"})
        assert r.json()["result"]["capabilities"]["resources"] == {"subscribe": True, "listChanged": True}


async def test_a_grant_taken_away_stops_the_relays_at_once(gw, tools_server):  # noqa: F811
    theirs = Agent(gw, "other")
    async with theirs as o:
        await o.subscribe_resource("live://public")
        await heard(tools_server, "live://public", theirs)
        changed = gw.admin("GET", "/admin/policy/versions/active", params={"format": "json"}).json()["document"]["mcp"]
        changed["resources"] = [g for g in changed["resources"] if g["identities"] != ["other"]]
        r = gw.admin("POST", "/admin/policy/changes", json={"sections": {"mcp": changed}, "reason": "no more public"})
        assert r.status_code == 201, r.text
        kept = len(theirs.updates)
        for _ in range(10):
            touch(tools_server, "live://public")
            await asyncio.sleep(0.2)
        assert len(theirs.updates) == kept


def replicas(tools_server, sim, tmp, limits: dict | None = None) -> tuple[Gateway, Gateway, str, dict[str, str]]:  # noqa: F811
    """Two processes on one store and one pepper, and a session of the reader's begun on the first: its headers."""
    key = generate("dev")
    e = {**extra(tools_server), **({"limits": limits} if limits else {})}
    common = dict(upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "m", "upstream": "sim"}],
                  identities=[{**IDENTITIES[0], "keys": [key]}], extra=e, env={"FILES_TOKEN": UPSTREAM_SECRET},
                  admin_key=generate("prod", kind="admin"))
    one = start_gateway(tmp, **common)
    two = start_gateway(tmp, **common)
    auth = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}}}
    sid = httpx.post(one.url + "/mcp/files", headers=auth, json=init).headers["mcp-session-id"]
    return one, two, sid, {**auth, "Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-06-18"}


def rpc(g: Gateway, headers: dict[str, str], method: str, uri: str) -> dict:
    r = httpx.post(g.url + "/mcp/files", headers=headers, json={"jsonrpc": "2.0", "id": 2, "method": method,
                                                               "params": {"uri": uri}})
    assert r.status_code == 200, r.text
    return r.json()


def told(listener: Listener, uri: str) -> bool:
    return any(UPDATED in line and f'"{uri}"' in line for line in listener.lines)


def touch_until(tools_server, uri: str, listener: Listener) -> None:  # noqa: F811
    for _ in range(50):
        touch(tools_server, uri)
        time.sleep(0.1)
        if told(listener, uri):
            return
    raise AssertionError(listener.lines)


def test_without_redis_a_subscription_is_heard_only_on_the_replica_that_took_it(tools_server, sim, tmp_path):  # noqa: F811
    one, two, sid, headers = replicas(tools_server, sim, tmp_path)
    try:
        assert rpc(one, headers, "resources/subscribe", "live://x")["result"] == {}
        on_two = Listener(two.url + "/mcp/files", headers)  # the same session's stream, on the other replica
        on_one = Listener(one.url + "/mcp/files", headers)
        assert on_two.status == on_one.status == 200
        touch_until(tools_server, "live://x", on_one)
        assert not told(on_two, "live://x"), on_two.lines  # not told: the README says so
        on_one.end()
        on_two.join()  # the session ended: the other replica's stream ends at its next keep-alive
    finally:
        one.stop()
        two.stop()


def test_with_redis_a_subscription_taken_on_one_replica_is_heard_on_the_others_and_left_there(tools_server, sim,  # noqa: F811
                                                                                             tmp_path):
    limits = {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": f"s{uuid.uuid4().hex[:8]}:", "redis_timeout_s": 5}
    one, two, sid, headers = replicas(tools_server, sim, tmp_path, limits)
    try:
        assert rpc(one, headers, "resources/subscribe", "live://y")["result"] == {}
        on_two = Listener(two.url + "/mcp/files", headers)  # the stream is on the replica that did not take it
        assert on_two.status == 200
        touch_until(tools_server, "live://y", on_two)
        assert rpc(two, headers, "resources/unsubscribe", "live://y")["result"] == {}  # left on the other replica
        for _ in range(50):
            if "live://y" not in upstream(tools_server)["subscribed"]:
                break
            time.sleep(0.1)
        assert "live://y" not in upstream(tools_server)["subscribed"]  # the replica holding it let it go upstream
        assert upstream(tools_server)["calls"].count("unsubscribe live://y") == 1
        on_two.end()
    finally:
        one.stop()
        two.stop()
