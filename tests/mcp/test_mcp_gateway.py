"""The MCP gateway, first slice (issue 25): the ``mcp`` SDK's Streamable HTTP client as the agent, a real sluice
in front of a fastmcp server over HTTP (its own process, logging every Authorization header it receives).

Two identities see different tools; a refused call is a JSON-RPC error that says so; the tool server never
sees a caller's key or token, only its own credential; a ``high`` tool is held, approved by another owner's
operator and runs once; a secret in a result is masked and an oversized result refused; bad input is a
JSON-RPC or HTTP error, never a 500; a session sealed by one gateway is served by another sharing the pepper."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from sluice.identity import generate
from support import Gateway, Proc, free_port, start_gateway

HERE = Path(__file__).parent
UPSTREAM_SECRET = "files-server-credential-7f3a9c2e"
SECRET = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"  # what the upstream's read_config returns
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
TOOLS = [
    {"name": "files__get_weather", "risk": "read", "identities": ["agent", "viewer"], "parameters": WEATHER},
    {"name": "files__transfer_funds", "risk": "high", "identities": ["agent"]},
    {"name": "files__delete_repo", "risk": "write", "identities": ["nobody"]},
    {"name": "files__read_config", "risk": "read", "identities": ["agent"]},
    {"name": "files__dump", "risk": "read", "identities": ["agent"]},
]
MAX_RESULT = 4096


class ToolServer:
    """tests/mcp/upstream_server.py as a process; ``seen()`` is every Authorization header it received."""

    def __init__(self, tmp: Path, jwks: str | None = None, audience: str | None = None) -> None:
        """``jwks``: accept only sluice's tokens signed by a key there, minted for ``audience`` (default: its URL)."""
        self.port = free_port()
        self.auth_log = tmp / "upstream-auth.log"
        self.auth_log.touch()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._args = [sys.executable, str(HERE / "upstream_server.py"), str(self.port), str(self.auth_log),
                      *([jwks, audience or self.url] if jwks else [])]
        self._tmp = tmp
        self._start()
        self.auth_log.write_text("")  # the readiness probes above are the test's, not the gateway's

    def _start(self) -> None:
        self.proc = Proc(self._args, self._tmp / f"upstream-{self.port}-{time.monotonic_ns()}.log")
        for _ in range(300):  # up once it answers anything (a GET without a session is its 4xx)
            try:
                httpx.get(self.url, timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise TimeoutError(self.proc.log())

    def restart(self) -> None:
        """Stop it and start it again on the same port: it forgets every session (and what they subscribed to)."""
        self.proc.stop()
        self._start()

    def seen(self) -> list[str]:
        return self.auth_log.read_text().splitlines()


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    s = ToolServer(tmp_path_factory.mktemp("mcp-upstream"))
    yield s
    s.proc.stop()


def mcp_extra(server: ToolServer) -> dict:
    # pin: off - the first slice's tests are about access, not definitions (tests/mcp/test_mcp_pins.py pins)
    return {"mcp": {"servers": [{"name": "files", "url": server.url, "credential_env": "FILES_TOKEN", "pin": "off"}],
                    "max_result_bytes": MAX_RESULT},
            "tools": TOOLS}


IDENTITIES = [{"name": n, "owner": "team@example.com", "models": ["*"]} for n in ("agent", "viewer")]


@pytest.fixture(scope="module")
def gw(tools_server, sim, tmp_path_factory):
    g = start_gateway(tmp_path_factory.mktemp("mcp-gw"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}], identities=IDENTITIES,
                      extra=mcp_extra(tools_server), env={"FILES_TOKEN": UPSTREAM_SECRET})
    yield g
    g.stop()


def agent(gw: Gateway, credential: str, server: str = "files") -> Client:
    """The mcp SDK's own client, as an agent would use it, with the caller's sluice credential."""
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {credential}"})
    return Client(streamable_http_client(f"{gw.url}/mcp/{server}", http_client=http), cache=None)


def text_of(result) -> str:
    return "".join(c.text for c in result.content if c.type == "text")


async def test_two_identities_see_only_the_tools_the_registry_grants_them(gw):
    async with agent(gw, gw.keys["agent"]) as a, agent(gw, gw.keys["viewer"]) as v:
        mine = {t.name for t in (await a.list_tools()).tools}
        theirs = {t.name for t in (await v.list_tools()).tools}
    assert mine == {"files__get_weather", "files__transfer_funds", "files__read_config", "files__dump"}
    assert theirs == {"files__get_weather"}  # delete_repo is nobody's: listed to no one


async def test_an_allowed_call_runs_and_a_refused_one_is_a_jsonrpc_error_that_says_why(gw):
    async with agent(gw, gw.keys["agent"]) as a, agent(gw, gw.keys["viewer"]) as v:
        assert text_of(await a.call_tool("files__get_weather", {"city": "Oslo"})) == "sunny in Oslo"
        for client, name, args, reason in [
            (a, "files__delete_repo", {"name": "prod"}, "tool_not_allowed"),   # in the registry, granted to nobody
            (v, "files__read_config", {}, "tool_not_allowed"),                 # granted to another identity
            (a, "files__get_weather", {"town": "Oslo"}, "arguments_invalid"),  # the registry's JSON Schema
        ]:
            with pytest.raises(MCPError) as err:
                await client.call_tool(name, args)
            assert err.value.code == -32010 and "refused by the gateway's policy" in err.value.error.message
            assert reason in err.value.error.data["reason"]
        with pytest.raises(MCPError) as err:
            await a.call_tool("get_weather", {"city": "Oslo"})  # the server's own name is no name here
        assert err.value.error.data["code"] == "unknown_tool"


async def test_the_tool_server_never_sees_the_callers_key_or_token(gw, tools_server):
    token = httpx.post(gw.v1 + "/token", data={"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                                               "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
                                               "subject_token": gw.keys["agent"],
                                               "resource": f"{gw.url}/mcp/files"}).json()["access_token"]  # RFC 8707
    before = len(tools_server.seen())
    for credential in (gw.keys["agent"], token):
        async with agent(gw, credential) as a:
            assert text_of(await a.call_tool("files__get_weather", {"city": "Rome"})) == "sunny in Rome"
    seen = tools_server.seen()
    assert seen and len(seen) > before
    assert set(seen) == {f"Bearer {UPSTREAM_SECRET}"}, seen  # its own credential on every request, nothing else


async def test_a_high_tool_is_held_then_runs_once_after_another_owners_operator_approves(gw):
    made = gw.admin("POST", "/admin/identities", json={"name": "mcp-approver", "owner": "ops@example.com",
                                                      "roles": ["operator"]})
    assert made.status_code == 201, made.text
    approver = gw.admin("POST", f"/admin/identities/{made.json()['id']}/keys", json={"plane": "control"}).json()["key"]
    args = {"amount": 12.5, "to": "alice"}
    async with agent(gw, gw.keys["agent"]) as a:
        held = await a.call_tool("files__transfer_funds", args)
        assert held.is_error and "needs approval" in text_of(held) and "it did not run" in text_of(held)
        apv = held.meta["sluice/approval"]["id"]
        assert apv.startswith("apv_") and apv in text_of(held)
        with pytest.raises(MCPError) as err:  # not yet approved
            await a.call_tool("files__transfer_funds", args, meta={"sluice/approval": apv})
        assert err.value.error.data["code"] == "approval_pending"
        r = httpx.post(f"{gw.admin_url}/admin/tool-approvals/{apv}/decision", json={"approved": True},
                       headers={"Authorization": f"Bearer {approver}"})
        assert r.status_code == 200, r.text
        with pytest.raises(MCPError) as err:  # other arguments than the approved ones
            await a.call_tool("files__transfer_funds", {"amount": 9999, "to": "mallory"}, meta={"sluice/approval": apv})
        assert err.value.error.data["code"] == "approval_arguments_mismatch"
        ran = await a.call_tool("files__transfer_funds", args, meta={"sluice/approval": apv})
        assert not ran.is_error and text_of(ran) == "sent 12.5 to alice"
        with pytest.raises(MCPError) as err:  # once
            await a.call_tool("files__transfer_funds", args, meta={"sluice/approval": apv})
        assert err.value.error.data["code"] == "approval_used"


async def test_an_mcp_calls_approval_and_redemption_are_entries_of_the_merkle_log_that_verify_accepts(gw):
    made = gw.admin("POST", "/admin/identities", json={"name": "mcp-auditor-op", "owner": "sec@example.com",
                                                      "roles": ["operator"]})
    assert made.status_code == 201, made.text
    approver = gw.admin("POST", f"/admin/identities/{made.json()['id']}/keys", json={"plane": "control"}).json()["key"]
    args = {"amount": 3.0, "to": "bob"}
    async with agent(gw, gw.keys["agent"]) as a:
        apv = (await a.call_tool("files__transfer_funds", args)).meta["sluice/approval"]["id"]
        assert httpx.post(f"{gw.admin_url}/admin/tool-approvals/{apv}/decision", json={"approved": True},
                          headers={"Authorization": f"Bearer {approver}"}).status_code == 200
        assert text_of(await a.call_tool("files__transfer_funds", args, meta={"sluice/approval": apv})) == "sent 3.0 to bob"
    entries = gw.admin("GET", "/admin/audit/entries", params={"since": "0", "limit": 100000}).json()["data"]
    mine = {e["action"]: (i, e) for i, e in enumerate(entries) if e.get("target") == apv}
    assert set(mine) == {"tool_approval.approve", "tool_approval.redeem"}, mine
    leaf, approved = mine["tool_approval.approve"]
    assert approved["actor"] == "mcp-auditor-op" and "files__transfer_funds" in json.dumps(approved)
    proof = gw.admin("GET", "/admin/audit/proof/inclusion", params={"leaf": leaf})
    assert proof.status_code == 200, proof.text  # a leaf of the Merkle tree
    verify = subprocess.run([sys.executable, "-m", "sluice", "audit", "verify", "-c", str(gw.config_path)],
                            capture_output=True, text=True, cwd=gw.tmp, timeout=120)
    assert verify.returncode == 0, verify.stdout + verify.stderr


async def test_a_secret_in_a_tool_result_is_masked_and_an_oversized_result_refused(gw):
    async with agent(gw, gw.keys["agent"]) as a:
        got = await a.call_tool("files__read_config", {})
        assert SECRET not in text_of(got) and "[REDACTED:" in text_of(got) and "region = eu-west-1" in text_of(got)
        assert SECRET not in str(got.structured_content)
        assert len(text_of(await a.call_tool("files__dump", {"size": 100}))) == 100
        with pytest.raises(MCPError) as err:
            await a.call_tool("files__dump", {"size": MAX_RESULT * 2})
        assert err.value.code == -32011 and err.value.error.data["code"] == "mcp_result_too_large"
    assert SECRET not in gw.log()


async def test_without_a_grant_no_caller_lists_or_reads_a_resource_or_gets_a_prompt(gw):
    """Default deny: this gateway's policy holds no ``mcp.resources`` or ``mcp.prompts`` grant, so the server's
    resources, templates and prompts are nobody's: the lists are empty and a read or get says why it is refused."""
    async with agent(gw, gw.keys["agent"]) as a:
        assert (await a.list_resources()).resources == []
        assert (await a.list_resource_templates()).resource_templates == []
        assert (await a.list_prompts()).prompts == []
        for ask, kind, reason in [(a.read_resource("docs://readme"), "resources", "resource_not_allowed"),
                                  (a.read_resource("notes://rivers"), "resources", "resource_not_allowed"),
                                  (a.get_prompt("files__summarize", {"text": "x"}), "prompts", "prompt_not_allowed")]:
            with pytest.raises(MCPError) as err:
                await ask
            assert err.value.code == -32010 and err.value.error.data["reason"] == reason
            assert f"no grant in the policy's mcp.{kind}" in err.value.error.message


def post(gw: Gateway, key: str | None, body: bytes, session: str | None = None, server: str = "files") -> httpx.Response:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if session:
        headers["Mcp-Session-Id"] = session
    return httpx.post(f"{gw.url}/mcp/{server}", content=body, headers=headers, timeout=30)


INIT = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},'
        b'"clientInfo":{"name":"raw","version":"1"}}}')
LIST = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'


def session_of(gw: Gateway, key: str) -> str:
    r = post(gw, key, INIT)
    assert r.status_code == 200 and r.json()["result"]["protocolVersion"] == "2025-06-18", r.text
    return r.headers["mcp-session-id"]


def test_bad_input_is_a_jsonrpc_or_http_error_never_a_500(gw):
    key = gw.keys["agent"]
    sid = session_of(gw, key)
    other = session_of(gw, gw.keys["viewer"])
    cases = [
        (b"{not json", sid, 400, -32700, "parse_error"),
        (b"[" + LIST + b"]", sid, 400, -32600, "batch_not_supported"),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', sid, 400, -32600, "invalid_request"),
        (b"null", sid, 400, -32600, "invalid_request"),
        (b'{"jsonrpc":"2.0","id":3,"method":"tools/teleport"}', sid, 200, -32601, "method_not_found"),
        (b'{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":5}}', sid, 200, -32602, "invalid_params"),
        (LIST, None, 400, -32600, "missing_session"),
        (LIST, other, 404, -32012, "unknown_session"),  # the viewer's session, with the agent's key
        (LIST, sid[:-4] + "AAAA", 404, -32012, "unknown_session"),
        (LIST, "x" * 5000, 404, -32012, "unknown_session"),
    ]
    for body, session, status, code, reason in cases:
        r = post(gw, key, body, session)
        assert r.status_code == status, (body, r.status_code, r.text)
        err = r.json()["error"]
        assert (err["code"], err["data"]["code"]) == (code, reason), (body, r.text)
    assert post(gw, key, LIST, sid).json()["result"]["tools"]  # the session itself is fine
    assert post(gw, key, LIST, sid, server="nowhere").status_code == 404
    assert post(gw, key, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', sid).status_code == 202
    no_session = httpx.get(f"{gw.url}/mcp/files", headers={"Authorization": f"Bearer {key}"})  # the GET stream's
    assert no_session.status_code == 400 and no_session.json()["error"]["data"]["code"] == "missing_session"


def test_no_credential_gets_401_naming_the_protected_resource_metadata(gw):
    r = post(gw, None, INIT)
    assert r.status_code == 401 and r.json()["error"]["data"]["code"] == "missing_api_key"
    meta_url = f"{gw.url}/.well-known/oauth-protected-resource/mcp/files"
    assert r.headers["www-authenticate"] == f'Bearer resource_metadata="{meta_url}"'
    meta = httpx.get(meta_url).json()  # public
    assert meta["resource"] == f"{gw.url}/mcp/files" and meta["authorization_servers"] == [gw.url]
    server = httpx.get(f"{gw.url}/.well-known/oauth-authorization-server").json()
    assert server["token_endpoint"] == f"{gw.url}/v1/token"
    assert httpx.get(f"{gw.url}/.well-known/oauth-protected-resource/mcp/nowhere").status_code == 404
    assert post(gw, "slk_dev_not-a-key", INIT).status_code == 401


def test_ending_a_session_refuses_its_id_after(gw):
    key = gw.keys["agent"]
    sid = session_of(gw, key)
    assert post(gw, key, LIST, sid).status_code == 200
    r = httpx.delete(f"{gw.url}/mcp/files", headers={"Authorization": f"Bearer {key}", "Mcp-Session-Id": sid})
    assert r.status_code == 200
    assert post(gw, key, LIST, sid).status_code == 404


def test_a_session_sealed_by_one_gateway_is_served_by_another_sharing_the_pepper(tools_server, sim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp-two")  # one store (SQLite file) and one pepper, two processes
    keys = {"agent": generate("dev")}
    idents = [{"name": "agent", "owner": "team@example.com", "models": ["*"], "keys": [keys["agent"]]}]
    admin = generate("prod", kind="admin")
    common = dict(upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=[{"name": "m", "upstream": "sim"}],
                  identities=idents, extra=mcp_extra(tools_server), env={"FILES_TOKEN": UPSTREAM_SECRET}, admin_key=admin)
    one = start_gateway(tmp, **common)
    two = start_gateway(tmp, **common)
    try:
        sid = session_of(one, keys["agent"])
        for g in (two, one, two):
            r = post(g, keys["agent"], b'{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":'
                                       b'"files__get_weather","arguments":{"city":"Lima"}}}', sid)
            assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "sunny in Lima", r.text
    finally:
        one.stop()
        two.stop()
