"""The common tools/call is read and answered without the SDK's models (``sluice/mcp/jsonrpc.py``); what it does
not read the SDK's path decides, as before. These tests hold the fast path to that: arguments that are not an
object, envelopes and params in other shapes, a float no JSON peer reads the same way, a schema with local
``$ref``s, and a result the wire shape must still reshape (a field no protocol version knows, a null).

Real parts: a sluice process; the fastmcp server of tests/mcp/upstream_server.py; a raw MCP server double (an
HTTP server answering JSON-RPC by hand) for a result no fastmcp tool sends."""

from __future__ import annotations

import json
import threading

import pytest

from support import LoopbackServer, QuietHandler, start_gateway
from test_mcp_gateway import INIT, UPSTREAM_SECRET, ToolServer, post, session_of

CITY = {"type": "object", "$defs": {"city": {"type": "string", "minLength": 2}},
        "properties": {"city": {"$ref": "#/$defs/city"}}, "required": ["city"], "additionalProperties": False}
ODD_RESULT = {"content": [{"type": "text", "text": "odd"}], "structuredContent": None, "isError": False,
              "vendorExtra": {"x": 1}}  # a field no protocol version's CallToolResult has, and a null


class RawMcp(QuietHandler):
    """A tool server written by hand: one tool, ``odd``, whose result is ``ODD_RESULT``; every tools/call's params
    are kept in ``calls``."""

    calls: list = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802
        msg = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "id" not in msg:
            self.send_body(b"", status=202)
            return
        method = msg["method"]
        if method == "initialize":
            result = {"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                      "serverInfo": {"name": "raw", "version": "1"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "odd", "inputSchema": {"type": "object"}}]}
        elif method == "tools/call":
            with self.lock:
                self.calls.append(msg["params"])
            result = ODD_RESULT
        else:
            result = {}
        body = json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Mcp-Session-Id", "raw-session-1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def gw(sim, tmp_path_factory):
    files = ToolServer(tmp_path_factory.mktemp("fast-files"))
    raw = LoopbackServer(RawMcp)
    tools = [{"name": "files__get_weather", "risk": "read", "identities": ["agent"], "parameters": CITY},
             {"name": "raw__odd", "risk": "read", "identities": ["agent"]}]
    servers = [{"name": "files", "url": files.url, "credential_env": "FILES_TOKEN", "pin": "off"},
               {"name": "raw", "url": raw.url + "/mcp", "pin": "off"}]
    g = start_gateway(tmp_path_factory.mktemp("mcp-fast"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "m", "upstream": "sim"}],
                      identities=[{"name": "agent", "owner": "team@example.com", "models": ["*"]}],
                      extra={"mcp": {"servers": servers}, "tools": tools}, env={"FILES_TOKEN": UPSTREAM_SECRET})
    yield g
    g.stop()
    raw.stop()
    files.proc.stop()


def call(gw, sid: str, params: object, req_id: object = 7, server: str = "files"):
    body = json.dumps({"jsonrpc": "2.0", "id": req_id, "method": "tools/call", "params": params}).encode()
    return post(gw, gw.keys["agent"], body, sid, server)


def test_arguments_or_meta_that_are_not_objects_are_invalid_params(gw):
    sid = session_of(gw, gw.keys["agent"])
    for params in [{"name": "files__get_weather", "arguments": ["Oslo"]},
                   {"name": "files__get_weather", "arguments": "{\"city\": \"Oslo\"}"},
                   {"name": "files__get_weather", "arguments": 5},
                   {"name": "files__get_weather", "arguments": {"city": "Oslo"}, "_meta": ["x"]},
                   {"name": "files__get_weather", "arguments": {"city": "Oslo"}, "_meta": {"progressToken": [1]}},
                   {"arguments": {"city": "Oslo"}},
                   {"name": None}]:
        r = call(gw, sid, params)
        assert r.status_code == 200, (params, r.status_code, r.text)
        err = r.json()["error"]
        assert (err["code"], err["data"]["code"]) == (-32602, "invalid_params"), (params, r.text)
    ok = call(gw, sid, {"name": "files__get_weather", "arguments": {"city": "Oslo"}, "_meta": {"progressToken": 3}})
    assert ok.json()["result"]["content"] == [{"type": "text", "text": "sunny in Oslo"}], ok.text


def test_envelopes_in_other_shapes_are_decided_as_before_and_ids_come_back_as_sent(gw):
    key, sid = gw.keys["agent"], session_of(gw, gw.keys["agent"])
    for body, status, code, reason in [
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[{"name":"files__get_weather"}]}', 400, -32600,
         "invalid_request"),
        (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"x"}', 400, -32600, "invalid_request"),
        (b'{"jsonrpc":"2.0","id":1,"method":5}', 400, -32600, "invalid_request"),
        # no id the SDK reads as one: a notification to it (answered 202), never a call
        (b'{"jsonrpc":"2.0","id":true,"method":"tools/call","params":{"name":"files__get_weather"}}', 202, None, None),
        (b'{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}', 202, None, None),
    ]:
        r = post(gw, key, body, sid)
        assert r.status_code == status, (body, r.status_code, r.text)
        if code is None:
            continue
        err = r.json()["error"]
        assert (err["code"], err["data"]["code"]) == (code, reason), (body, r.text)
    for req_id in ("7", 7, "", -3):
        r = call(gw, sid, {"name": "files__get_weather", "arguments": {"city": "Oslo"}}, req_id)
        assert r.json()["id"] == req_id and type(r.json()["id"]) is type(req_id), r.text
        assert r.json()["result"]["structuredContent"] == {"result": "sunny in Oslo"}, r.text


def test_a_float_out_of_json_range_in_arguments_is_refused_never_a_500(gw):
    key, sid = gw.keys["agent"], session_of(gw, gw.keys["agent"])
    for number in (b"NaN", b"Infinity", b"1e400", b"-1e400"):
        body = (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"files__get_weather",'
                b'"arguments":{"city":"Oslo","n":' + number + b'}}}')
        r = post(gw, key, body, sid)
        assert r.status_code in (200, 400), (number, r.status_code, r.text)
        err = r.json()["error"]
        assert err["code"] in (-32010, -32700), (number, r.text)
        if err["code"] == -32010:
            assert err["data"]["reason"].startswith("arguments_not_json"), (number, r.text)


def test_a_schema_with_local_refs_is_applied_to_arguments_as_they_arrived(gw):
    sid = session_of(gw, gw.keys["agent"])
    ok = call(gw, sid, {"name": "files__get_weather", "arguments": {"city": "Oslo"}})
    assert ok.json()["result"]["content"][0]["text"] == "sunny in Oslo", ok.text
    for args, where in [({"city": "O"}, "city: minLength"),  # the $ref'd definition's own bound
                        ({"city": 5}, "city: type"), ({"city": "Oslo", "x": 1}, "additionalProperties"),
                        ({}, "required")]:
        err = call(gw, sid, {"name": "files__get_weather", "arguments": args}).json()["error"]
        assert err["code"] == -32010 and err["data"]["reason"].startswith("arguments_invalid"), (args, err)
        assert where in err["data"]["reason"], (args, err)


def test_a_result_the_wire_shape_reshapes_is_still_reshaped(gw):
    sid = post(gw, gw.keys["agent"], INIT, server="raw").headers["mcp-session-id"]
    RawMcp.calls.clear()
    r = call(gw, sid, {"name": "raw__odd", "arguments": {"k": [1, {"z": None}]}}, server="raw")
    assert r.status_code == 200, r.text
    assert RawMcp.calls == [{"name": "odd", "arguments": {"k": [1, {"z": None}]}}]  # the arguments as they came
    result = r.json()["result"]
    assert result == {"content": [{"type": "text", "text": "odd"}], "isError": False}, r.text  # extra field, null: gone
