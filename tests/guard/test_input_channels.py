"""Input detectors read every text a request carries upstream, not only message content.

A real gateway in front of a recording upstream: what the upstream received is what the model
would read. One identity masks, one refuses.
"""

from __future__ import annotations

import copy
import json
import threading

import pytest

from corpus import PUBLIC_KEYS
from support import LoopbackServer, QuietHandler, start_gateway

AWS = "AKIAIOSFODNN7EXAMPLE"
EMAIL = "jane.doe@example.com"
MASKED_AWS, MASKED_EMAIL = "[REDACTED:aws_access_key]", "[REDACTED:email]"
REPLY = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": "rec-model",
         "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}
LOOKUP = {"type": "function", "function": {"name": "lookup", "description": "Look a record up.",
                                           "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}}


class Recorder:
    """An upstream that answers every chat request with one canned reply and keeps the bodies it got."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        outer, lock = self, threading.Lock()

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.bodies.append(body)
                self.send_body(json.dumps(REPLY).encode())

        self.server = LoopbackServer(Handler)
        self.url = self.server.url + "/v1"


@pytest.fixture(scope="module")
def upstream():
    r = Recorder()
    yield r
    r.server.stop()


@pytest.fixture(scope="module")
def gw(upstream, tmp_path_factory):
    ident = {"owner": "sec@example.com", "models": ["rec-model", "rec-vllm"]}
    g = start_gateway(
        tmp_path_factory.mktemp("input-channels"),
        upstreams=[{"name": "rec", "base_url": upstream.url}],
        models=[{"name": "rec-model", "upstream": "rec"}, {"name": "rec-vllm", "upstream": "rec", "extra_params": "vllm"}],
        identities=[{"name": "masker", **ident}, {"name": "blocker", **ident}],
        extra={"guardrails": {"rule_sets": [
            {"name": "masking", "match": {"identities": ["masker"]}, "detectors": {"input": "mask"}},
            {"name": "blocking", "match": {"identities": ["blocker"]}, "detectors": {"input": "block"}}]},
            "tools": [{"name": "lookup", "identities": ["masker", "blocker"]}]},
    )
    yield g
    g.stop()


def send(gw, upstream, who: str, body: dict) -> tuple[int, dict, dict | None]:
    """(status, the answer, what the upstream received or None)."""
    before = len(upstream.bodies)
    r = gw.post("/v1/chat/completions", gw.keys[who], json={"model": "rec-model", "max_tokens": 8, **body})
    return r.status_code, r.json(), upstream.bodies[-1] if len(upstream.bodies) > before else None


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def asked(tool_calls: list | None = None, **fields) -> dict:
    return {"role": "assistant", "content": None, **({"tool_calls": tool_calls} if tool_calls else {}), **fields}


def call(arguments: str) -> dict:
    return {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}


# (case, request fields, param a refusal names, where the upstream's copy holds the masked text)
CHANNELS = [
    ("text parts, split", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "my key is AKIAIOS"}, {"type": "text", "text": "FODNN7EXAMPLE, thanks"}]}]},
     "messages[0].content[0].text", lambda b: b["messages"][0]["content"]),
    ("tool result", {"messages": [user("look it up"), asked([call('{"id": "1"}')]),
                                  {"role": "tool", "tool_call_id": "call_1", "content": f"record: {AWS}"}]},
     "messages[2].content", lambda b: b["messages"][2]["content"]),
    ("tool result parts, split", {"messages": [user("look it up"), asked([call('{"id": "1"}')]), {
        "role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "key AKIA"},
                                                              {"type": "text", "text": "IOSFODNN7EXAMPLE"}]}]},
     "messages[2].content[0].text", lambda b: b["messages"][2]["content"]),
    ("tool call arguments", {"messages": [user("hi"), asked([call('{"id": "1"}'), call(json.dumps({"key": AWS, "n": 2}))]),
                                          {"role": "tool", "tool_call_id": "call_1", "content": "done"}]},
     "messages[1].tool_calls[1].function.arguments", lambda b: b["messages"][1]["tool_calls"][1]["function"]["arguments"]),
    ("legacy function call arguments", {"messages": [user("hi"), asked(function_call={"name": "lookup", "arguments": json.dumps({"key": AWS})})]},
     "messages[1].function_call.arguments", lambda b: b["messages"][1]["function_call"]["arguments"]),
    ("message name", {"messages": [{"role": "user", "name": EMAIL, "content": "hi"}]},
     "messages[0].name", lambda b: b["messages"][0]["name"]),
    ("refusal", {"messages": [user("hi"), asked(refusal=f"I will not use {AWS}"), user("why?")]},
     "messages[1].refusal", lambda b: b["messages"][1]["refusal"]),
    ("prediction", {"messages": [user("rewrite this")], "prediction": {"type": "content", "content": f"key = {AWS}"}},
     "prediction.content", lambda b: b["prediction"]["content"]),
    ("prediction parts, split", {"messages": [user("rewrite this")], "prediction": {"type": "content", "content": [
        {"type": "text", "text": "key = AKIAIOSFOD"}, {"type": "text", "text": "NN7EXAMPLE"}]}},
     "prediction.content[0].text", lambda b: b["prediction"]["content"]),
    ("tool description", {"messages": [user("hi")], "tools": [
        {"type": "function", "function": {**LOOKUP["function"], "description": f"Use the key {AWS}."}}]},
     "tools[0].function.description", lambda b: b["tools"][0]["function"]["description"]),
    ("tool parameters", {"messages": [user("hi")], "tools": [{"type": "function", "function": {
        **LOOKUP["function"], "parameters": {"type": "object", "properties": {"key": {"type": "string", "default": AWS}}}}}]},
     "tools[0].function.parameters", lambda b: b["tools"][0]["function"]["parameters"]),
    ("legacy function definition", {"messages": [user("hi")], "functions": [
        {"name": "lookup", "description": f"Use the key {AWS}.", "parameters": {"type": "object"}}]},
     "functions[0].description", lambda b: b["functions"][0]["description"]),
    ("response format", {"messages": [user("hi")], "response_format": {"type": "json_schema", "json_schema": {
        "name": "out", "schema": {"type": "object", "description": f"signed with {AWS}"}}}},
     "response_format", lambda b: b["response_format"]),
    ("stop", {"messages": [user("hi")], "stop": ["END", AWS]}, "stop[1]", lambda b: b["stop"]),
    ("metadata", {"messages": [user("hi")], "metadata": {"owner": EMAIL}}, "metadata.owner", lambda b: b["metadata"]),
    ("user", {"messages": [user("hi")], "user": EMAIL}, "user", lambda b: b["user"]),
    ("safety identifier", {"messages": [user("hi")], "safety_identifier": EMAIL}, "safety_identifier",
     lambda b: b["safety_identifier"]),
    ("vLLM documents", {"model": "rec-vllm", "messages": [user("hi")], "documents": [{"title": "notes", "text": f"key {AWS}"}]},
     "documents", lambda b: b["documents"]),
]


@pytest.mark.parametrize("fields, where", [(c[1], c[3]) for c in CHANNELS], ids=[c[0] for c in CHANNELS])
def test_a_secret_in_any_text_field_is_masked_before_the_upstream_sees_it(gw, upstream, fields, where):
    status, answer, seen = send(gw, upstream, "masker", fields)
    assert status == 200, answer
    raw = json.dumps(seen)
    assert AWS not in raw and EMAIL not in raw and "AKIAIOS" not in raw and "ODNN7EXAMPLE" not in raw, raw
    assert MASKED_AWS in json.dumps(where(seen)) or MASKED_EMAIL in json.dumps(where(seen)), where(seen)


@pytest.mark.parametrize("fields, param", [(c[1], c[2]) for c in CHANNELS], ids=[c[0] for c in CHANNELS])
def test_a_secret_in_any_text_field_is_refused_naming_that_field(gw, upstream, fields, param):
    status, answer, seen = send(gw, upstream, "blocker", fields)
    assert status == 400 and seen is None, answer
    err = answer["error"]
    assert err["code"] == "guardrail_violation" and err["param"] == param, err
    assert AWS not in json.dumps(answer) and EMAIL not in json.dumps(answer)


def test_a_secret_split_across_text_parts_is_masked_in_each_part_it_spans_and_nowhere_else(gw, upstream):
    parts = [{"type": "text", "text": "first AKIAIOSF"}, {"type": "text", "text": "ODNN"},
             {"type": "image_url", "image_url": {"url": "https://images.example.com/cat.png"}},
             {"type": "text", "text": "7EXAMPLE and then"}, {"type": "text", "text": " write to jane.doe@"},
             {"type": "text", "text": "example.com today"}, {"type": "text", "text": " nothing here"}]
    status, answer, seen = send(gw, upstream, "masker", {"messages": [{"role": "user", "content": parts}]})
    assert status == 200, answer
    assert seen["messages"][0]["content"] == [
        {"type": "text", "text": "first [REDACTED:aws_access_key]"}, {"type": "text", "text": "[REDACTED:aws_access_key]"},
        parts[2], {"type": "text", "text": "[REDACTED:aws_access_key] and then"},
        {"type": "text", "text": " write to [REDACTED:email]"}, {"type": "text", "text": "[REDACTED:email] today"}, parts[6]]


def test_masked_tool_call_arguments_stay_json(gw, upstream):
    args = json.dumps({"card": 4111111111111111, "note": f"key\n{AWS}\tend", "nested": [{"aws_secret_access_key":
                       "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}]})
    status, answer, seen = send(gw, upstream, "masker", {"messages": [user("hi"), asked([call(args)]),
                                                                      {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]})
    assert status == 200, answer
    assert json.loads(seen["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {
        "card": "[REDACTED:card_number]", "note": f"key\n{MASKED_AWS}\tend",
        "nested": [{"[REDACTED:aws_secret_key]": "[REDACTED:aws_secret_key]"}]}


def test_a_request_whose_every_field_is_clean_reaches_the_upstream_unchanged(gw, upstream):
    body = {"model": "rec-vllm", "messages": [
        {"role": "system", "content": "You look records up.\n"},
        {"role": "user", "name": "jane", "content": [{"type": "text", "text": "find record "}, {"type": "text", "text": "42"}]},
        asked([call('{"id": "42"}')]), {"role": "tool", "tool_call_id": "call_1", "content": '{"name": "Ada"}'},
        asked(refusal="I cannot do that. "), user("thanks")],
        "tools": [LOOKUP], "prediction": {"type": "content", "content": "The record is "}, "stop": ["\nEND"],
        "metadata": {"team": "records"}, "user": "u-7f3a9c", "documents": [{"title": "notes", "text": "plain notes"}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "out", "schema": {"type": "object"}}}}
    for who in ("masker", "blocker"):
        status, answer, seen = send(gw, upstream, who, copy.deepcopy(body))
        assert status == 200, answer
        assert {k: seen[k] for k in body if k not in ("model", "max_tokens")} == {k: v for k, v in body.items() if k != "model"}


def test_an_opaque_id_that_is_a_hash_is_not_taken_for_a_secret(gw, upstream):
    hashed = "Zk3pQ9xLm2Vb7Nc4Rt8Yw1Ae5Sd6Fg0Hj9Kl2Qw"  # random by design: high entropy is no finding here
    fields = {"messages": [user("hi")], "user": hashed, "safety_identifier": hashed, "prompt_cache_key": hashed,
              "metadata": {"session": hashed}}
    status, answer, seen = send(gw, upstream, "blocker", fields)
    assert status == 200, answer
    assert seen["user"] == seen["safety_identifier"] == seen["prompt_cache_key"] == seen["metadata"]["session"] == hashed


def test_public_keys_and_certificates_reach_the_upstream_untouched_and_are_not_refused(gw, upstream):
    text = "Please check these keys:\n" + "\n\n".join(PUBLIC_KEYS)
    args = json.dumps({"keys": PUBLIC_KEYS})
    for who in ("masker", "blocker"):
        status, answer, seen = send(gw, upstream, who, {"messages": [user(text), asked([call(args)]),
                                                                     {"role": "tool", "tool_call_id": "call_1", "content": text}]})
        assert status == 200, answer
        assert seen["messages"][0]["content"] == seen["messages"][2]["content"] == text
        assert seen["messages"][1]["tool_calls"][0]["function"]["arguments"] == args
