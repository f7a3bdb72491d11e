"""A sluice-minted credential per MCP server (issue 25, item 3): ``credential: mint`` makes sluice send a short-lived
token it signs itself, with the keys of ``/v1/token`` (published at ``/.well-known/jwks.json``), whose ``aud`` is
that server's URL, minted again before it expires.

Two fastmcp servers over HTTP check those tokens with fastmcp's own ``JWTVerifier`` against sluice's JWKS: one
expects its own URL as the audience and serves the calls; the other expects another audience and refuses every
request, so the call fails closed as ``mcp_upstream_error`` and no request ever reaches it without a token."""

from __future__ import annotations

import base64
import json
import time

import pytest
from mcp.shared.exceptions import MCPError

from support import free_port, start_gateway
from test_mcp_gateway import TOOLS, ToolServer, agent, text_of

TTL = 10  # seconds: the shortest a minted credential may live; refreshed after two thirds of it


def claims(header: str) -> dict:
    assert header.startswith("Bearer eyJ"), header
    payload = header.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.fixture(scope="module")
def rig(sim, tmp_path_factory):
    port = free_port()  # sluice's data port, known before it starts: the servers fetch its JWKS from there
    jwks = f"http://127.0.0.1:{port}/.well-known/jwks.json"
    right = ToolServer(tmp_path_factory.mktemp("minted-right"), jwks=jwks)
    wrong = ToolServer(tmp_path_factory.mktemp("minted-wrong"), jwks=jwks, audience="http://tools.elsewhere.example/mcp")
    tools = TOOLS + [{"name": "other__get_weather", "risk": "read", "identities": ["agent"]}]
    g = start_gateway(tmp_path_factory.mktemp("minted-gw"), port=port, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                      extra={"tools": tools, "mcp": {"servers": [
                          {"name": "files", "url": right.url, "credential": "mint", "credential_ttl_s": TTL, "pin": "off"},
                          {"name": "other", "url": wrong.url, "credential": "mint", "pin": "off"}]}})
    yield g, right, wrong
    g.stop()
    right.proc.stop()
    wrong.proc.stop()


async def test_a_server_checking_the_audience_accepts_the_token_sluice_mints_for_it_and_a_fresh_one_later(rig):
    g, right, _ = rig
    async with agent(g, g.keys["agent"]) as a:
        assert text_of(await a.call_tool("files__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
        first = right.seen()
        assert first and all(h.startswith("Bearer eyJ") for h in first)  # never no credential, never the caller's key
        c = claims(first[-1])
        assert c["aud"] == right.url and c["iss"] == "sluice" and c["exp"] - c["iat"] == TTL
        assert "cred" not in c  # no credential of a caller behind it
        time.sleep(TTL * 2 / 3 + 1)  # past two thirds of its life: the next request carries a new one
        assert text_of(await a.call_tool("files__get_weather", {"city": "Rome"})) == "sunny in Rome"
    later = claims(right.seen()[-1])
    assert later["jti"] != c["jti"] and later["iat"] > c["iat"] and later["aud"] == right.url
    assert g.keys["agent"] not in "".join(right.seen())


async def test_a_server_expecting_another_audience_refuses_and_the_call_fails_closed(rig):
    g, _, wrong = rig
    async with agent(g, g.keys["agent"], server="other") as a:
        with pytest.raises(MCPError) as err:
            await a.call_tool("other__get_weather", {"city": "Oslo"})
    assert err.value.code == -32011 and err.value.error.data["code"] == "mcp_upstream_error"
    seen = wrong.seen()
    assert seen and all(h.startswith("Bearer eyJ") for h in seen), seen  # it was never tried without a credential
    assert {claims(h)["aud"] for h in seen} == {wrong.url}  # minted for the URL sluice knows, which it does not expect
