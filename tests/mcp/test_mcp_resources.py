"""Resources, prompts and completion through the MCP gateway (issue 25, items 1 and 4), and its auth details
(item 3): the ``mcp`` SDK's client as the agent, a real sluice in front of the fastmcp server of
``upstream_server.py``.

The agent lists and reads resources and gets prompts through sluice, on a server's path and on the federated
``/mcp``; an identity no grant names sees neither and is refused with a JSON-RPC error that says so; a secret in
a resource or a prompt reaches the agent masked. An access token minted for another endpoint is a 401 with the
path's ``WWW-Authenticate``; one minted for this endpoint works; an identity without the invoker role is 403."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference, ResourceTemplateReference

from sluice.identity import generate
from support import start_gateway
from telemetry.test_tracing import FAST_EXPORT, Collector, attrs
from test_mcp_gateway import SECRET, UPSTREAM_SECRET, agent, mcp_extra, tools_server  # noqa: F401 - a fixture

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
IDENTITIES = [{"name": n, "owner": "team@example.com", "models": ["*"]} for n in ("reader", "outsider")]


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    yield c
    c.server.stop()


@pytest.fixture(scope="module")
def gw(tools_server, sim, collector, tmp_path_factory):  # noqa: F811
    extra = mcp_extra(tools_server)
    extra["mcp"]["resources"] = [{"server": "files", "identities": ["reader"], "uris": ["docs://*", "config://*", "notes://*"]}]
    extra["mcp"]["prompts"] = [{"server": "files", "identities": ["reader"], "names": ["summarize", "leak"]}]
    extra["telemetry"] = {"tracing": {"endpoint": collector.url, "ratio": 1.0}}  # a span per read and get
    g = start_gateway(tmp_path_factory.mktemp("mcp-res"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}], identities=IDENTITIES,
                      extra=extra, env={"FILES_TOKEN": UPSTREAM_SECRET, **FAST_EXPORT})
    yield g
    g.stop()


def federated(gw, credential: str):
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {credential}"})
    return Client(streamable_http_client(f"{gw.url}/mcp", http_client=http), cache=None)


def token(gw, key: str, resource: str | None = None) -> httpx.Response:
    form = {"grant_type": GRANT, "subject_token_type": ACCESS, "subject_token": key}
    if resource is not None:
        form["resource"] = resource
    return httpx.post(gw.v1 + "/token", data=form)


async def test_the_agent_lists_and_reads_resources_and_gets_prompts_through_sluice(gw):
    async with agent(gw, gw.keys["reader"]) as a:
        uris = {str(r.uri) for r in (await a.list_resources()).resources}
        assert uris == {"docs://readme", "config://app"}
        templates = {t.uri_template for t in (await a.list_resource_templates()).resource_templates}
        assert templates == {"notes://{topic}"}
        read = await a.read_resource("docs://readme")
        assert read.contents[0].text.startswith("# files")
        assert (await a.read_resource("notes://rivers")).contents[0].text == "a note on rivers"
        prompts = {p.name for p in (await a.list_prompts()).prompts}
        assert prompts == {"files__summarize", "files__leak"}
        got = await a.get_prompt("files__summarize", {"text": "the tide"})
        assert got.messages[0].content.text == "Summarize this: the tide"
    async with federated(gw, gw.keys["reader"]) as f:  # /mcp: the same, resources by their URI
        assert "docs://readme" in {str(r.uri) for r in (await f.list_resources()).resources}
        assert (await f.read_resource("notes://seas")).contents[0].text == "a note on seas"
        assert "files__summarize" in {p.name for p in (await f.list_prompts()).prompts}
        got = await f.get_prompt("files__summarize", {"text": "waves"})
        assert got.messages[0].content.text == "Summarize this: waves"


async def test_an_identity_no_grant_names_sees_no_resource_or_prompt_and_is_refused(gw):
    async with agent(gw, gw.keys["outsider"]) as o:
        assert (await o.list_resources()).resources == []
        assert (await o.list_resource_templates()).resource_templates == []
        assert (await o.list_prompts()).prompts == []
        for ask, reason in [(o.read_resource("docs://readme"), "resource_not_allowed"),
                            (o.read_resource("notes://x"), "resource_not_allowed"),
                            (o.get_prompt("files__summarize", {"text": "x"}), "prompt_not_allowed"),
                            (o.complete(PromptReference(type="ref/prompt", name="files__summarize"),
                                        {"name": "text", "value": "t"}), "prompt_not_allowed")]:
            with pytest.raises(MCPError) as err:
                await ask
            assert err.value.code == -32010 and "refused by the gateway's policy" in err.value.error.message
            assert err.value.error.data["reason"] == reason


async def test_a_secret_in_a_resource_or_a_prompt_reaches_the_agent_masked(gw):
    async with agent(gw, gw.keys["reader"]) as a:
        text = (await a.read_resource("config://app")).contents[0].text
        assert SECRET not in text and "region = eu-west-1" in text
        prompt = (await a.get_prompt("files__leak")).messages[0].content.text
        assert SECRET not in prompt and "log in" in prompt


def decisions(g, want, at_least: int = 1) -> list[dict]:
    for _ in range(50):  # rows are written off the request path
        rows = [r for r in g.admin("GET", "/admin/tool-decisions?limit=500").json()["data"] if want(r)]
        if len(rows) >= at_least:
            return rows
        time.sleep(0.1)
    raise AssertionError("no such decision rows")


async def test_each_read_and_get_ends_in_one_record_a_metric_and_a_span(gw, collector):
    async with agent(gw, gw.keys["reader"]) as a, agent(gw, gw.keys["outsider"]) as o:
        await a.read_resource("config://app")
        await a.get_prompt("files__summarize", {"text": "the neap tide"})
        with pytest.raises(MCPError):
            await o.read_resource("notes://secret-plans")
        with pytest.raises(MCPError):
            await o.get_prompt("files__leak")
    ids = {i["name"]: i["id"] for i in gw.admin("GET", "/admin/identities").json()["data"]}
    read = decisions(gw, lambda r: r["tool"] == "resource:config://app")[0]  # an earlier test read it too: alike
    assert (read["model"], read["decision"], read["upstream_status"]) == ("mcp:files", "allow", "ok")
    assert read["latency_ms"] > 0 and read["result_bytes"] > 20 and len(read["args_sha256"]) == 64
    assert "[REDACTED:" in read["result_masked"] and SECRET not in read["result_masked"]  # as it went back
    assert "region = eu-west-1" in read["result_masked"] and "config://app" in read["args_masked"]
    [got] = decisions(gw, lambda r: r["tool"] == "prompt:files__summarize" and "neap" in r["args_masked"])
    assert (got["decision"], got["upstream_status"]) == ("allow", "ok") and "Summarize this" in got["result_masked"]
    [refused] = decisions(gw, lambda r: r["tool"] == "resource:notes://secret-plans")
    assert (refused["decision"], refused["reason"], refused["upstream_status"], refused["result_bytes"]) == (
        "block", "resource_not_allowed", None, None)
    [denied] = decisions(gw, lambda r: r["tool"] == "prompt:files__leak" and r["identity_id"] == ids["outsider"])
    assert (denied["decision"], denied["reason"]) == ("block", "prompt_not_allowed")
    assert read["identity_id"] == got["identity_id"] == ids["reader"] and refused["identity_id"] == ids["outsider"]
    text = gw.admin("GET", "/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith("sluice_mcp_calls_total{") and 'server="files"' in ln]
    assert any('tool="prompt:files__summarize"' in ln and 'decision="allow"' in ln for ln in lines), lines
    assert any('tool="resources/read"' in ln and 'decision="block"' in ln for ln in lines), lines  # not one per URI
    spans = {}
    for _ in range(100):
        spans = {attrs(s).get("mcp.tool"): (s.name, attrs(s)) for s in collector.spans}
        if "resource:config://app" in spans and "prompt:files__summarize" in spans:
            break
        time.sleep(0.1)
    name, read_span = spans["resource:config://app"]
    assert name == "mcp resources/read" and read_span["mcp.method"] == "resources/read"
    assert read_span["sluice.decision"] == "allow" and read_span["mcp.server"] == "files"
    assert spans["prompt:files__summarize"][0] == "mcp prompts/get"


async def test_each_completion_that_reaches_a_server_ends_in_one_record_a_metric_and_a_span(gw, collector):
    async with agent(gw, gw.keys["reader"]) as a, agent(gw, gw.keys["outsider"]) as o:
        done = await a.complete(PromptReference(type="ref/prompt", name="files__summarize"), {"name": "text", "value": "the ti"})
        assert done.completion.values == ["the tide", "the tidal bore"]
        topics = await a.complete(ResourceTemplateReference(type="ref/resource", uri="notes://{topic}"),
                                  {"name": "topic", "value": "r"})
        assert topics.completion.values == ["rivers", "rain"]
        with pytest.raises(MCPError):
            await o.complete(PromptReference(type="ref/prompt", name="files__summarize"), {"name": "text", "value": "wxyz-q"})
    ids = {i["name"]: i["id"] for i in gw.admin("GET", "/admin/identities").json()["data"]}
    [prompt] = decisions(gw, lambda r: r["tool"] == "completion:files__summarize" and r["identity_id"] == ids["reader"])
    assert (prompt["model"], prompt["decision"], prompt["upstream_status"]) == ("mcp:files", "allow", "ok")
    assert prompt["latency_ms"] > 0 and prompt["result_bytes"] > 20 and len(prompt["args_sha256"]) == 64
    assert "the tidal bore" in prompt["result_masked"] and "the ti" in prompt["args_masked"]
    [template] = decisions(gw, lambda r: r["tool"] == "completion:notes://{topic}")
    assert (template["decision"], template["upstream_status"]) == ("allow", "ok") and "rivers" in template["result_masked"]
    [refused] = decisions(gw, lambda r: r["tool"] == "completion:files__summarize" and "wxyz-q" in r["args_masked"])
    assert refused["identity_id"] == ids["outsider"]
    assert (refused["decision"], refused["reason"], refused["upstream_status"], refused["result_bytes"]) == (
        "block", "prompt_not_allowed", None, None)
    text = gw.admin("GET", "/metrics").text
    lines = [ln for ln in text.splitlines() if ln.startswith("sluice_mcp_calls_total{") and 'server="files"' in ln]
    assert any('tool="completion:files__summarize"' in ln and 'decision="block"' in ln for ln in lines), lines
    assert any('tool="completion/complete"' in ln and 'decision="allow"' in ln for ln in lines), lines  # templates: one label
    for _ in range(100):
        spans = {attrs(s).get("mcp.tool"): (s.name, attrs(s)) for s in collector.spans}
        if "completion:notes://{topic}" in spans:
            break
        time.sleep(0.1)
    name, span = spans["completion:notes://{topic}"]
    assert name == "mcp completion/complete" and span["mcp.method"] == "completion/complete" and span["sluice.decision"] == "allow"


async def test_a_token_for_another_audience_is_401_and_one_for_this_endpoint_works(gw):
    other = token(gw, gw.keys["reader"])  # the gateway's own audience: the model routes', not this endpoint's
    assert other.status_code == 200, other.text
    plain = other.json()["access_token"]
    for_federated = token(gw, gw.keys["reader"], f"{gw.url}/mcp").json()["access_token"]
    for_files = token(gw, gw.keys["reader"], f"{gw.url}/mcp/files")
    assert for_files.status_code == 200, for_files.text
    assert token(gw, gw.keys["reader"], f"{gw.url}/mcp/nope").json()["error"]["code"] == "invalid_target"
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    for bad in (plain, for_federated):
        r = httpx.post(f"{gw.url}/mcp/files", json=init, headers={"Authorization": f"Bearer {bad}"})
        assert r.status_code == 401, r.text
        assert r.json()["error"]["data"]["code"] == "invalid_audience"
        assert r.headers["WWW-Authenticate"] == \
            f'Bearer resource_metadata="{gw.url}/.well-known/oauth-protected-resource/mcp/files"'
    ok = httpx.post(f"{gw.url}/mcp/files", json=init, headers={"Authorization": f"Bearer {for_files.json()['access_token']}"})
    assert ok.status_code == 200, ok.text  # initialize advertises what is relayed (list_changed on the GET stream)
    caps = ok.json()["result"]["capabilities"]
    assert caps["resources"] == {"subscribe": True, "listChanged": True} and caps["prompts"] == {"listChanged": True}
    assert caps["completions"] == {}
    async with agent(gw, for_files.json()["access_token"]) as a:
        assert (await a.read_resource("docs://readme")).contents[0].text.startswith("# files")
    async with federated(gw, for_federated) as f:
        assert "docs://readme" in {str(r.uri) for r in (await f.list_resources()).resources}
    # and the endpoint's token is no token on the model routes
    m = httpx.post(gw.v1 + "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"Authorization": f"Bearer {for_federated}"})
    assert m.status_code == 401 and m.json()["error"]["code"] == "invalid_audience"


async def test_an_identity_without_the_invoker_role_is_403(gw):
    made = gw.admin("POST", "/admin/identities", json={"name": "mcp-demoted", "owner": "ops@example.com"})
    assert made.status_code == 201, made.text
    key = gw.admin("POST", f"/admin/identities/{made.json()['id']}/keys", json={}).json()["key"]
    init = {"jsonrpc": "2.0", "id": 7, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    r = httpx.post(f"{gw.url}/mcp/files", json=init, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text  # an invoker: in
    assert gw.admin("PUT", f"/admin/identities/{made.json()['id']}/roles", json={"roles": []}).status_code == 200
    for _ in range(50):  # the key stays; the role is gone
        r = httpx.post(f"{gw.url}/mcp/files", json=init, headers={"Authorization": f"Bearer {key}"})
        if r.status_code != 200:
            break
        time.sleep(0.1)
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["data"]["code"] == "not_invoker"


def active_mcp(g) -> dict:
    got = g.admin("GET", "/admin/policy/versions/active", params={"format": "json"})
    assert got.status_code == 200, got.text
    return got.json()["document"]["mcp"]


def audit_entries(g, action: str) -> list[dict]:
    got = g.admin("GET", "/admin/audit/entries", params={"since": "0", "limit": 100000})
    assert got.status_code == 200, got.text
    return [e for e in got.json()["data"] if f'"{action}"' in json.dumps(e)]


async def test_grants_are_seeded_once_from_the_file_then_changed_only_by_an_audited_change_set(tools_server, sim,  # noqa: F811
                                                                                             tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp-grants")
    keys = {n: generate("dev") for n in ("reader", "outsider")}
    idents = [{**i, "keys": [keys[i["name"]]]} for i in IDENTITIES]
    admin = generate("prod", kind="admin")

    def start(resources: list[dict], port: int | None = None):
        extra = mcp_extra(tools_server)
        extra["mcp"]["resources"] = resources
        return start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], port=port,
                             models=[{"name": "m", "upstream": "sim"}], identities=idents, admin_key=admin,
                             extra=extra, env={"FILES_TOKEN": UPSTREAM_SECRET})

    g = start([{"server": "files", "identities": ["reader"], "uris": ["docs://*"]}])
    try:
        seeded = active_mcp(g)
        assert seeded["resources"] == [{"server": "files", "identities": ["reader"], "teams": [], "uris": ["docs://*"]}]
        assert seeded["prompts"] == []  # none written: nobody's
        async with agent(g, keys["outsider"]) as o:
            assert (await o.list_resources()).resources == []
        changed = {**seeded, "resources": seeded["resources"] + [
            {"server": "files", "identities": ["outsider"], "teams": [], "uris": ["notes://*"]}]}
        proposed = g.admin("POST", "/admin/policy/changes", json={"sections": {"mcp": changed}, "reason": "notes for the outsider"})
        assert proposed.status_code == 201, proposed.text  # dev: applied at once, a new policy version
        assert proposed.json()["sections"] == ["mcp"]
        async with agent(g, keys["outsider"]) as o:  # read from the active version at the next request
            assert (await o.read_resource("notes://tides")).contents[0].text == "a note on tides"
            assert {t.uri_template for t in (await o.list_resource_templates()).resource_templates} == {"notes://{topic}"}
            with pytest.raises(MCPError) as err:
                await o.read_resource("docs://readme")
            assert err.value.error.data["reason"] == "resource_not_allowed"
        assert any(proposed.json()["id"] in json.dumps(e) for e in audit_entries(g, "policy.propose"))
        port = g.port
    finally:
        g.stop()
    # restarted with other grants in the file: the stored policy's grants stand (the file seeded them once)
    g = start([{"server": "files", "identities": ["outsider"], "uris": ["*"]}], port=port)
    try:
        assert active_mcp(g)["resources"] == changed["resources"]
        async with agent(g, keys["outsider"]) as o:
            assert {str(r.uri) for r in (await o.list_resources()).resources} == set()
            assert (await o.read_resource("notes://seas")).contents[0].text == "a note on seas"
        verify = subprocess.run([sys.executable, "-m", "sluice", "audit", "verify", "-c", str(g.config_path)],
                                capture_output=True, text=True, cwd=g.tmp, timeout=120)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        g.stop()
