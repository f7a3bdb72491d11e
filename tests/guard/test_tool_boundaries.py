"""Tool boundaries without side doors (issue 23, items 1-3, 4, 7, 8 and 16): a real gateway in front of a
scripted upstream that answers whatever a test scripts (calls with no id or the same id twice, the legacy
``function_call``, calls nobody offered, secrets in a refusal, a call's arguments or exposed reasoning)."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from support import LoopbackServer, QuietHandler, start_gateway

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": False}
TRANSFER = {"type": "object", "properties": {"amount": {"type": "number"}, "to": {"type": "string"}},
            "required": ["amount", "to"], "additionalProperties": False}
TOOLS = [
    {"name": "get_weather", "risk": "read", "identities": ["agent", "app"], "parameters": WEATHER},
    {"name": "transfer_funds", "risk": "high", "identities": ["agent", "app"], "parameters": TRANSFER},
    {"name": "delete_repo", "risk": "write", "identities": ["nobody"]},
    {"name": "take_note", "risk": "read", "identities": ["agent"], "parameters": {"type": "object"}},
]
GUARDRAILS = {"rule_sets": [
    {"name": "agents", "match": {"identities": ["agent"]}, "detectors": {"input": "mask", "output": "mask"},
     "output": {"expose": ["reasoning_content"]}, "tools": {"max_held_per_reply": 2}},
    {"name": "guarded-core", "match": {"models": ["guarded"]}, "detectors": {"input": "block", "output": "mask"}},
    {"name": "scribed", "match": {"identities": ["scribe"]}, "detectors": {"input": "flag"},
     "capture": {"enabled": True, "retention_days": 1}},
]}
SECRET = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"  # a GitHub token shape the detectors know
HEAD = {"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}


class Scripted:
    """Answers each chat request with what the test scripted for its last user message."""

    def __init__(self) -> None:
        self.scripts: dict[str, dict | list[dict]] = {}
        self.fetches = 0  # GETs: a schema someone tried to fetch through the gateway
        self.chats = 0
        outer, lock = self, threading.Lock()

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                with lock:
                    outer.fetches += 1
                self.send_body(json.dumps({"type": "object"}).encode())

            def do_POST(self) -> None:  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.chats += 1
                prompt = req["messages"][-1]["content"]
                script = outer.scripts.get(prompt if isinstance(prompt, str) else "", reply({"content": "unscripted"}, "stop"))
                if req.get("stream"):  # one event per write, a little apart: the gateway meets each in its own read
                    self.send_events([b"data: " + json.dumps(e).encode() + b"\n\n" for e in
                                      (script if isinstance(script, list) else [script])] + [b"data: [DONE]\n\n"])
                    return
                self.send_body(json.dumps(script).encode())

        self.server = LoopbackServer(Handler)
        self.url = self.server.url


def reply(message: dict, finish: str = "tool_calls") -> dict:
    return {"id": "chatcmpl-w", "object": "chat.completion", "created": 1700000000, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}


def chunk(delta: dict, finish: str | None = None, index: int = 0) -> dict:
    return {**HEAD, "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def call(name: str, arguments: str, call_id: str | None = None) -> dict:
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {**out, "id": call_id} if call_id is not None else out


@pytest.fixture(scope="module")
def upstream():
    u = Scripted()
    yield u
    u.server.stop()


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    ident = {"owner": "sec@example.com", "models": ["*"]}
    g = start_gateway(
        tmp_path_factory.mktemp("tools-gw"),
        upstreams=[{"name": "fake", "base_url": upstream.url + "/v1"}],
        models=[{"name": "m", "upstream": "fake"}],
        identities=[{"name": "agent", **ident}, {"name": "app", **ident}, {"name": "scribe", **ident}],
        extra={"guardrails": GUARDRAILS, "tools": TOOLS,
               "registry": [{"name": "core", "versions": [{"version": "v1", "upstream": "fake", "upstream_model": "m",
                                                           "approved": True}]}],
               # two aliases and a hint-picked route, all to one version; the rule set names only `guarded`
               "routes": [{"name": "by-task", "match": {"models": ["side-door"], "task": ["audit"]},
                           "targets": [{"target": "core@v1"}]},
                          {"name": "guarded", "match": {"models": ["guarded"]}, "targets": [{"target": "core@v1"}]},
                          {"name": "side-door", "match": {"models": ["side-door"]}, "targets": [{"target": "core@v1"}]}]},
    )
    yield g
    g.stop()


@pytest.fixture(scope="module")
def approver(gw):
    ident = gw.admin("POST", "/admin/identities", json={"name": "approver", "owner": "other@example.com", "roles": ["operator"]})
    assert ident.status_code == 201, ident.text
    return gw.admin("POST", f"/admin/identities/{ident.json()['id']}/keys", json={"plane": "control"}).json()["key"]


def ask(gw, upstream, script, who: str = "agent", model: str = "m", **body) -> httpx.Response:
    prompt = f"script-{len(upstream.scripts)}"
    upstream.scripts[prompt] = script
    return gw.post("/v1/chat/completions", gw.keys[who],
                   json={"model": model, "messages": [{"role": "user", "content": prompt}], **body})


def ask_stream(gw, upstream, events: list[dict], who: str = "agent", **body) -> tuple[list[dict], str]:
    r = ask(gw, upstream, events, who, stream=True, **body)
    assert r.status_code == 200, r.text
    assert r.text.endswith("data: [DONE]\n\n"), r.text[-200:]
    chunks = [json.loads(line[6:]) for line in r.text.split("\n") if line.startswith("data: {")]
    return chunks, r.text


def streamed_calls(chunks: list[dict]) -> tuple[dict[int, dict], str, dict | None, str | None]:
    """(calls by index, content, the function_call, finish reason) as a client assembles them."""
    calls: dict[int, dict] = {}
    content, fc, finish = "", None, None
    for c in chunks:
        for ch in c.get("choices") or ():
            d = ch.get("delta") or {}
            for tc in d.get("tool_calls") or ():
                got = calls.setdefault(tc["index"], {"name": "", "arguments": ""})
                got["name"] += tc.get("function", {}).get("name") or ""
                got["arguments"] += tc.get("function", {}).get("arguments") or ""
            if d.get("function_call"):
                fc = fc or {"name": "", "arguments": ""}
                fc["name"] += d["function_call"].get("name") or ""
                fc["arguments"] += d["function_call"].get("arguments") or ""
            content += d.get("content") or ""
            finish = ch.get("finish_reason") or finish
    return calls, content, fc, finish


def pending(gw) -> list[dict]:
    return gw.admin("GET", "/admin/tool-approvals", params={"status": "pending", "limit": 1000}).json()["data"]


# -- 1. a tool's schema never makes the gateway fetch anything ----------------------------------------------

@pytest.mark.parametrize("ref", ["{url}/schema.json", "file:///etc/passwd", "{url}/s.json#/defs/x", "other.json"])
def test_a_tool_schema_that_refers_outside_itself_is_refused_when_the_policy_compiles_and_nothing_is_fetched(
        gw, upstream, ref):
    schema = {"type": "object", "properties": {"city": {"$ref": ref.format(url=upstream.url)}}}
    tools = [*TOOLS, {"name": "lookup", "risk": "read", "identities": ["agent"], "parameters": schema}]
    r = gw.admin("POST", "/admin/policy/changes", json={"sections": {"tools": tools}, "reason": "a remote schema"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert f"$.tools[{len(TOOLS)}].parameters.properties.city.$ref" in err["message"] and "#" in err["message"], err
    assert upstream.fetches == 0
    # a schema that refers only within itself is fine, and judges calls with no fetch either
    local = {"$defs": {"city": {"type": "string"}}, "type": "object", "properties": {"city": {"$ref": "#/$defs/city"}},
             "required": ["city"]}
    tools = [*TOOLS, {"name": "lookup", "risk": "read", "identities": ["agent"], "parameters": local}]
    ok = gw.admin("POST", "/admin/policy/changes", json={"sections": {"tools": tools}, "reason": "a local ref"})
    assert ok.status_code in (200, 201), ok.text
    got = ask(gw, upstream, reply({"content": None, "tool_calls": [call("lookup", '{"city": 7}', "c1")]}))
    assert got.status_code == 200 and "tool_calls" not in got.json()["choices"][0]["message"], got.text
    assert got.json()["sluice"]["tool_calls"][0]["reason"].startswith("arguments_invalid")
    assert upstream.fetches == 0
    back = gw.admin("POST", "/admin/policy/changes", json={"sections": {"tools": TOOLS}, "reason": "restore"})
    assert back.status_code in (200, 201), back.text


def test_a_config_file_tool_with_a_remote_schema_fails_the_check_naming_the_field(tmp_path):
    import subprocess
    import sys

    import yaml

    cfg = tmp_path / "sluice.yaml"
    cfg.write_text(yaml.safe_dump({"tools": [{"name": "t", "identities": ["a"],
                                              "parameters": {"$ref": "http://169.254.169.254/latest/meta-data"}}]}))
    out = subprocess.run([sys.executable, "-m", "sluice", "config", "check", str(cfg)], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode != 0 and "$.tools[0].parameters.$ref" in out.stdout + out.stderr, out.stdout + out.stderr


# -- 2. the legacy functions and function_call, and calls nobody offered ------------------------------------

def test_legacy_functions_offered_must_be_granted_registry_tools(gw, upstream):
    r = ask(gw, upstream, reply({"content": "hi"}, "stop"), functions=[{"name": "delete_repo", "parameters": {}}])
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "functions[0].name" and r.json()["error"]["code"] == "guardrail_violation"
    ok = ask(gw, upstream, reply({"content": "hi"}, "stop"), functions=[{"name": "get_weather", "parameters": WEATHER}])
    assert ok.status_code == 200, ok.text


def test_a_legacy_function_call_in_a_whole_reply_is_judged_like_a_tool_call(gw, upstream):
    blocked = ask(gw, upstream, reply({"content": None, "function_call": {"name": "delete_repo", "arguments": '{"repo": "prod"}'}},
                                      "function_call"))
    msg = blocked.json()["choices"][0]
    assert "function_call" not in msg["message"] and msg["finish_reason"] == "stop", blocked.text
    assert "delete_repo" in msg["message"]["content"] and "prod" not in msg["message"]["content"]
    held = ask(gw, upstream, reply({"content": None, "function_call": {"name": "transfer_funds",
                                                                       "arguments": '{"amount": 5, "to": "x"}'}}, "function_call"))
    body = held.json()
    assert "function_call" not in body["choices"][0]["message"] and "approval id apv_" in body["choices"][0]["message"]["content"]
    assert body["sluice"]["tool_calls"][0]["decision"] == "hold"
    allowed = ask(gw, upstream, reply({"content": None, "function_call": {"name": "get_weather", "arguments": '{ "city" : "Oslo" }'}},
                                      "function_call"))
    m = allowed.json()["choices"][0]
    assert m["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city":"Oslo"}'}, allowed.text
    assert m["finish_reason"] == "function_call"


def test_a_streamed_legacy_function_call_is_judged_and_nothing_of_a_blocked_one_goes_out(gw, upstream):
    events = [chunk({"role": "assistant", "content": None}), chunk({"function_call": {"name": "delete_repo", "arguments": ""}}),
              chunk({"function_call": {"arguments": '{"repo": '}}), chunk({"function_call": {"arguments": '"crown-jewels"}'}}),
              chunk({}, "function_call")]
    chunks, raw = ask_stream(gw, upstream, events)
    _, content, fc, finish = streamed_calls(chunks)
    assert fc is None and "crown-jewels" not in raw and "delete_repo" in content and finish == "stop", raw


def test_calls_in_a_reply_to_a_request_that_offered_no_tools_are_judged(gw, upstream):
    r = ask(gw, upstream, reply({"content": None, "tool_calls": [call("delete_repo", '{"repo": "prod"}', "c1")]}))
    msg = r.json()["choices"][0]["message"]
    assert "tool_calls" not in msg and "delete_repo" in msg["content"], r.text
    chunks, raw = ask_stream(gw, upstream, [
        chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "delete_repo", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"repo": "prod-db"}'}}]}), chunk({}, "tool_calls")])
    calls, content, _, finish = streamed_calls(chunks)
    assert calls == {} and "prod-db" not in raw and finish == "stop", raw


# -- 3. calls are told apart by position, never by id ---------------------------------------------------------

@pytest.mark.parametrize("ids", [(None, None), ("call_1", "call_1"), ("", "")])
def test_a_held_call_never_goes_out_beside_an_allowed_one_whatever_their_ids(gw, upstream, ids):
    r = ask(gw, upstream, reply({"content": None, "tool_calls": [
        call("get_weather", '{"city": "Oslo"}', ids[0]), call("transfer_funds", '{"amount": 9999, "to": "mallory"}', ids[1])]}))
    msg = r.json()["choices"][0]["message"]
    assert [c["function"]["name"] for c in msg["tool_calls"]] == ["get_weather"], r.text
    assert "mallory" not in r.text and "approval id apv_" in msg["content"]


def test_streamed_calls_with_no_ids_are_told_apart_by_index(gw, upstream):
    events = [chunk({"tool_calls": [{"index": 0, "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]}),
              chunk({"tool_calls": [{"index": 1, "type": "function", "function": {"name": "transfer_funds", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"amount": 9999, "to": "mallory"}'}}]}),
              chunk({}, "tool_calls")]
    chunks, raw = ask_stream(gw, upstream, events)
    calls, content, _, finish = streamed_calls(chunks)
    assert [c["name"] for c in calls.values()] == ["get_weather"] and finish == "tool_calls", raw
    assert "mallory" not in raw and "approval id apv_" in content


# -- 4. strict arguments; allowed calls go out canonical --------------------------------------------------------

@pytest.mark.parametrize("arguments, reason", [
    ('{"city": "Oslo", "city": "Paris"}', "duplicate_key"),
    ('{"city": NaN}', "arguments_not_json"),
    ('{"city": "Oslo", "n": Infinity}', "arguments_not_json"),
    ('{"city": "Oslo", "n": 1e400}', "number_out_of_range"),
])
def test_arguments_that_are_not_strict_json_block_the_call(gw, upstream, arguments, reason):
    r = ask(gw, upstream, reply({"content": None, "tool_calls": [call("get_weather", arguments, "c1")]}))
    body = r.json()
    assert "tool_calls" not in body["choices"][0]["message"], r.text
    assert reason in body["sluice"]["tool_calls"][0]["reason"]


def test_a_transfer_padded_to_hide_a_second_amount_is_blocked_before_any_approval(gw, upstream):
    padded = '{"to":"alice","amount":5' + " " * 4200 + ',"amount":9999,"to":"mallory"}'
    before = len(pending(gw))
    r = ask(gw, upstream, reply({"content": None, "tool_calls": [call("transfer_funds", padded, "c1")]}))
    assert r.json()["sluice"]["tool_calls"][0]["decision"] == "block", r.text
    assert len(pending(gw)) == before


def test_allowed_calls_go_out_in_their_canonical_form_whole_and_streamed(gw, upstream):
    r = ask(gw, upstream, reply({"content": None, "tool_calls": [call("get_weather", '{ "city" :\n "Tromsø" }', "c1")]}))
    assert r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Tromsø"}', r.text
    pieces = ['{ "ci', 'ty" : ', '"Trom', 'sø" }']
    events = [chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})]
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in pieces]
    chunks, raw = ask_stream(gw, upstream, events + [chunk({}, "tool_calls")])
    frags = [tc["function"].get("arguments") for c in chunks for ch in c["choices"]
             for tc in (ch.get("delta") or {}).get("tool_calls") or ()]
    assert "".join(f or "" for f in frags) == '{"city":"Tromsø"}' and len([f for f in frags if f]) > 1, raw


# -- 7. one reply holds few calls --------------------------------------------------------------------------------

def test_a_reply_holds_at_most_max_held_per_reply_calls_and_blocks_the_rest(gw, upstream):
    before = len(pending(gw))
    many = [call("transfer_funds", json.dumps({"amount": n, "to": f"acct-{n}"}), f"c{n}") for n in range(20)]
    r = ask(gw, upstream, reply({"content": None, "tool_calls": many}))
    decisions = [d["decision"] for d in r.json()["sluice"]["tool_calls"]]
    assert decisions == ["hold"] * 2 + ["block"] * 18, decisions
    assert {d["reason"] for d in r.json()["sluice"]["tool_calls"][2:]} == {"too_many_held_calls"}
    assert len(pending(gw)) == before + 2


# -- 8. output detectors read every channel a reply carries ------------------------------------------------------

def test_a_secret_in_a_refusal_in_exposed_reasoning_or_in_call_arguments_is_masked_in_a_whole_reply(gw, upstream):
    r = ask(gw, upstream, reply({"content": None, "refusal": f"no, but here: {SECRET}", "reasoning_content": f"key {SECRET}",
                                 "tool_calls": [call("get_weather", json.dumps({"city": f"Oslo {SECRET}"}), "c1")]}))
    assert SECRET not in r.text, r.text
    msg = r.json()["choices"][0]["message"]
    assert "[REDACTED:github_token]" in msg["refusal"] and "[REDACTED:github_token]" in msg["reasoning_content"]
    assert json.loads(msg["tool_calls"][0]["function"]["arguments"]) == {"city": "Oslo [REDACTED:github_token]"}


def test_a_secret_split_across_streamed_refusal_reasoning_and_argument_chunks_is_masked(gw, upstream):
    half = len(SECRET) // 2
    events = [chunk({"role": "assistant", "refusal": "sorry: " + SECRET[:half]}), chunk({"refusal": SECRET[half:] + " end"}),
              chunk({"reasoning_content": "think " + SECRET[:half]}), chunk({"reasoning_content": SECRET[half:] + " done"}),
              chunk({"tool_calls": [{"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "' + SECRET[:half]}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": SECRET[half:] + '"}'}}]}),
              chunk({}, "tool_calls")]
    chunks, raw = ask_stream(gw, upstream, events)
    assert SECRET[:half] not in raw and SECRET[half:] not in raw, raw
    refusal = "".join((ch.get("delta") or {}).get("refusal") or "" for c in chunks for ch in c["choices"])
    reasoning = "".join((ch.get("delta") or {}).get("reasoning_content") or "" for c in chunks for ch in c["choices"])
    assert refusal == "sorry: [REDACTED:github_token] end" and reasoning == "think [REDACTED:github_token] done"
    calls, _, _, finish = streamed_calls(chunks)
    assert json.loads(calls[0]["arguments"]) == {"city": "[REDACTED:github_token]"} and finish == "tool_calls"


def test_several_choices_in_one_event_are_each_read_by_the_detectors(gw, upstream):
    two = {**HEAD, "choices": [{"index": 0, "delta": {"content": f"a {SECRET} b"}, "finish_reason": None},
                               {"index": 1, "delta": {"content": f"c {SECRET} d"}, "finish_reason": None}]}
    chunks, raw = ask_stream(gw, upstream, [two, chunk({}, "stop"), chunk({}, "stop", index=1)], n=1)
    assert SECRET not in raw and raw.count("[REDACTED:github_token]") == 2, raw


# -- 16. rule sets cover the versions a request may be served by, whatever alias or route it took -------------

@pytest.mark.parametrize("model, headers", [("guarded", {}), ("side-door", {}), ("side-door", {"x-sluice-task": "audit"})])
def test_a_rule_set_on_one_alias_covers_every_alias_and_route_to_its_version(gw, upstream, model, headers):
    prompt = f"guarded-{model}-{len(headers)}"
    upstream.scripts[prompt] = reply({"content": "fine"}, "stop")
    r = gw.post("/v1/chat/completions", gw.keys["app"], headers=headers,
                json={"model": model, "messages": [{"role": "user", "content": f"{prompt} {SECRET}"}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "guardrail_violation", r.text
    assert SECRET not in r.text


def test_a_number_in_call_arguments_that_is_a_card_is_masked_and_the_arguments_stay_json(gw, upstream):
    r = ask(gw, upstream, reply({"content": None, "tool_calls": [
        call("take_note", '{"text": "pay", "card": 4111111111111111, "key": "aws_secret_access_key=' + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" + '"}', "c1")]}))
    args = json.loads(r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert args == {"text": "pay", "card": "[REDACTED:card_number]", "key": "[REDACTED:aws_secret_key]"}, args


def test_a_public_key_streamed_in_small_pieces_reaches_the_caller_untouched(gw, upstream):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    text = f"Here is the key:\n{pem}That is all."
    events = [chunk({"content": text[i:i + 16]}) for i in range(0, len(text), 16)] + [chunk({}, "stop")]
    chunks, raw = ask_stream(gw, upstream, events)
    got = "".join((ch.get("delta") or {}).get("content") or "" for c in chunks for ch in c["choices"])
    assert got == text, got


def test_prompt_capture_masks_a_secret_split_across_two_text_parts(gw, upstream):
    import sqlite3

    half = len(SECRET) // 2
    parts = [{"type": "text", "text": f"capture-split {SECRET[:half]}"}, {"type": "text", "text": SECRET[half:] + " end"}]
    r = gw.post("/v1/chat/completions", gw.keys["scribe"], json={"model": "m", "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 200, r.text

    def captured() -> list[str]:
        with sqlite3.connect(gw.tmp / "sluice.db") as conn:
            return [row[0] for row in conn.execute("SELECT text FROM prompt_captures WHERE text LIKE '%capture-split%'")]

    deadline = time.monotonic() + 10
    while not captured():
        assert time.monotonic() < deadline, "nothing captured"
        time.sleep(0.05)
    assert captured() == ["user: capture-split [REDACTED:github_token] end"], captured()
