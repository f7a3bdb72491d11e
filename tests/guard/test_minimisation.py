"""Output minimisation by default (issue 12, item 3): a real gateway in front of a vLLM-shaped fake
upstream whose replies carry logprobs, a system fingerprint and vendor fields; driven with httpx
and the openai SDK."""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest

from support import LoopbackServer, QuietHandler, start_gateway

LOGPROBS = {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": []}]}
TOOL_CALLS = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]
USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12, "prompt_tokens_details": {"cached_tokens": 0}}
VENDOR_REPLY = {"system_fingerprint": "fp_3f2a", "prompt_logprobs": [None, {"1": {"logprob": -1.5}}],
                "kv_transfer_params": {"remote_host": "10.0.0.7", "remote_block_ids": [3, 4]},
                "prompt_token_ids": [1, 2, 3], "x_vendor_trace": "node-17"}
VENDOR_CHOICE = {"stop_reason": 128009, "token_ids": [9, 8], "x_vendor_score": 0.5}
VENDOR_MESSAGE = {"reasoning_content": "internal chain of thought", "x_vendor_note": "n"}
STRIPPED = ["system_fingerprint", "prompt_logprobs", "kv_transfer_params", "prompt_token_ids", "x_vendor_trace",
            "stop_reason", "token_ids", "x_vendor_score", "reasoning_content", "x_vendor_note", "logprobs"]


SECRET = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"  # a GitHub token's shape: the output detectors mask it


def whole_reply(model: str) -> dict:
    """Every vendor field at every level; ``logprobs-model``: logprobs and nothing else beyond the basics."""
    text = f"the token {SECRET} end" if model == "secret-model" else "Hi there, \"friend\" \u2713"
    vendor = model != "logprobs-model"
    message = {"role": "assistant", "content": text, "tool_calls": TOOL_CALLS, **(VENDOR_MESSAGE if vendor else {})}
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": LOGPROBS, "finish_reason": "tool_calls",
                         **(VENDOR_CHOICE if vendor else {})}],
            "usage": USAGE, **(VENDOR_REPLY if vendor else {})}


def stream_events(model: str) -> list[dict]:
    head = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1700000000, "model": model, **VENDOR_REPLY}

    def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
        return {**head, "choices": [{"index": 0, "delta": delta, "logprobs": LOGPROBS, "finish_reason": finish,
                                     **VENDOR_CHOICE, **extra}]}
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": piece, **VENDOR_MESSAGE}) for piece in ["Hi", " there", ", \"friend\"", " \u2713"]]
    events.append(chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]}))
    events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in ["{\"city\"", ": \"Oslo\"}"]]
    events.append(chunk({}, "tool_calls"))
    events.append({**head, "choices": [], "usage": USAGE})
    return events


def openai_events(model: str) -> list[dict]:
    """OpenAI's shape: only scalar extras (a fingerprint, obfuscation padding) on every chunk."""
    head = {"id": "chatcmpl-4", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
            "service_tier": "default", "system_fingerprint": "fp_5e1c"}
    pieces = ["One", " \"two\"", ", \"system_fingerprint\": 3"]
    events = [{**head, "choices": [{"index": 0, "delta": {"content": p}, "logprobs": None, "finish_reason": None}],
               "obfuscation": "x9Qz"} for p in pieces]
    return events + [{**head, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}], "obfuscation": "k"}]


def paced_events(model: str) -> list[dict]:
    """A 40-event token stream with nothing to strip, except where the model's name says:
    ``first-model`` (a vendor's fields on every event from the first), ``stop-model`` (vLLM's
    stop_reason set in the finish chunk) and ``late-model`` (reasoning_content first in event 30)."""
    head = {"id": "chatcmpl-5", "object": "chat.completion.chunk", "created": 1700000000, "model": model}
    if model == "first-model":
        head = {**head, "x_vendor_trace": "node-17", "kv_transfer_params": {"remote_host": "10.0.0.7"}}
    events = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{**head, "choices": [{"index": 0, "delta": {"content": f" t{i}"}, "finish_reason": None}]} for i in range(38)]
    if model == "late-model":
        events[30]["choices"][0]["delta"]["reasoning_content"] = "internal chain of thought"
    finish = {"index": 0, "delta": {}, "finish_reason": "stop"}
    if model == "stop-model":
        finish["stop_reason"] = "</answer>"
    return events + [{**head, "choices": [finish]}]


def choices_events(model: str, n: int) -> list[dict]:
    """``n`` choices interleaved event by event, choice ``i`` closing after ``12 * (i + 1)`` tokens
    (so each closes at its own point, the first ones mid-stream); choice 0's finish chunk carries
    vLLM's stop_reason and choice 1 has reasoning_content in one delta, both far from the first events."""
    head = {"id": "chatcmpl-6", "object": "chat.completion.chunk", "created": 1700000000, "model": model}

    def event(choice: dict) -> dict:
        return {**head, "choices": [{"delta": {}, "finish_reason": None, **choice}]}
    events = [event({"index": i, "delta": {"role": "assistant", "content": ""}}) for i in range(n)]
    for step in range(12 * n + 1):
        for i in range(n):
            if step < 12 * (i + 1):
                delta = {"content": f" c{i}t{step}"}
                if i == 1 and step == 7:
                    delta["reasoning_content"] = "internal chain of thought"
                events.append(event({"index": i, "delta": delta}))
            elif step == 12 * (i + 1):
                events.append(event({"index": i, "finish_reason": "stop", **({"stop_reason": "</a>"} if i == 0 else {})}))
    return events


PACED = ("first-model", "stop-model", "late-model", "choices-model")

ERROR_EVENT = b'data: {"error": {"message": "the model is overloaded", "type": "server_error", "code": 503}}\n\n'


# Whitespace no encoder of ours writes: a reply with nothing to strip must come back as these very bytes.
CLEAN = (b'{ "id": "chatcmpl-3",  "object": "chat.completion", "created": 1700000000, "model": "clean-model",\n'
         b'  "choices": [ { "index": 0, "message": { "role": "assistant", "content": "plain" }, "logprobs": null,\n'
         b'  "finish_reason": "stop", "stop_reason": null } ], "system_fingerprint": null,\n'
         b'  "usage": { "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4 } }')


class FakeVllm:
    """Answers like vLLM with every vendor field set (model ``vendor-model``) or with none (``clean-model``)."""

    def __init__(self) -> None:
        self.last: dict = {}
        outer = self
        lock = threading.Lock()

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.last = req
                if req["model"] in PACED:  # one event per write: the gateway meets each in its own block
                    sent = choices_events(req["model"], req.get("n") or 1) if req["model"] == "choices-model" else \
                        paced_events(req["model"])
                    events = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in sent]
                    self.send_events([*events, b"data: [DONE]\n\n"])
                    return
                if req["model"] == "clean-model":
                    body, kind = CLEAN, "application/json"
                elif req["model"] == "error-model":
                    body = b"data: " + json.dumps(openai_events(req["model"])[0]).encode() + b"\n\n" + ERROR_EVENT
                    kind = "text/event-stream"
                elif req["model"] == "openai-model":
                    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in openai_events(req["model"]))
                    body, kind = body + b"data: [DONE]\n\n", "text/event-stream"
                elif req.get("stream"):
                    body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in stream_events(req["model"]))
                    body, kind = body + b"data: [DONE]\n\n", "text/event-stream"
                else:
                    body, kind = json.dumps(whole_reply(req["model"])).encode(), "application/json"
                self.send_body(body, kind)

        self.server = LoopbackServer(Handler)
        self.url = self.server.url + "/v1"


@pytest.fixture(scope="module")
def upstream():
    f = FakeVllm()
    yield f
    f.server.stop()


def _gateway(tmp, upstream, extra: dict | None = None):
    names = ["vendor-model", "secret-model", "logprobs-model", "clean-model", "openai-model", "error-model", *PACED]
    ident = {"owner": "ml@example.com", "models": names}
    return start_gateway(tmp, upstreams=[{"name": "fake", "base_url": upstream.url}],
                         models=[{"name": n, "upstream": "fake"} for n in names],
                         identities=[{"name": "app", **ident}, {"name": "scorer", **ident}, {"name": "auditor", **ident}], extra=extra)


@pytest.fixture(scope="module")
def bare(upstream, tmp_path_factory):
    """No guardrails section at all: minimisation is the default."""
    g = _gateway(tmp_path_factory.mktemp("min-bare"), upstream)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def granted(upstream, tmp_path_factory):
    """One expose grant (no rule set, no tool): `scorer` sees logprobs."""
    g = _gateway(tmp_path_factory.mktemp("min-grant"), upstream,
                 {"guardrails": {"expose": [{"identities": ["scorer"], "fields": ["logprobs"]}]}})
    yield g
    g.stop()


@pytest.fixture(scope="module")
def every_event(upstream, tmp_path_factory):
    """`auditor`'s streams are checked on every event (`stream_check: every_event`); the others sampled."""
    rule_set = {"name": "audited", "match": {"identities": ["auditor"]}, "output": {"stream_check": "every_event"}}
    g = _gateway(tmp_path_factory.mktemp("min-every"), upstream, {"guardrails": {"rule_sets": [rule_set]}})
    yield g
    g.stop()


@pytest.fixture(scope="module")
def guarded(upstream, tmp_path_factory):
    """Output detectors on for `app` and `scorer`, so a whole reply takes the guard's own paths: `app`
    the typed decode (nothing exposed, no tool registry), `scorer` (granted system_fingerprint) the
    decoded dict; `auditor`, outside the rule set, minimisation alone."""
    rule_set = {"name": "masked", "match": {"identities": ["app", "scorer"]}, "detectors": {"output": "mask"}}
    g = _gateway(tmp_path_factory.mktemp("min-guarded"), upstream,
                 {"guardrails": {"rule_sets": [rule_set],
                                 "expose": [{"identities": ["scorer"], "fields": ["system_fingerprint"]}]}})
    yield g
    g.stop()


def chat(gw, who: str = "app", model: str = "vendor-model", **body) -> httpx.Response:
    return gw.post("/v1/chat/completions", gw.keys[who], json={"model": model, "messages": [{"role": "user", "content": "hi"}], **body})


def streamed(gw, who: str = "app", model: str = "vendor-model", **body) -> list[dict]:
    with httpx.stream("POST", gw.v1 + "/chat/completions", headers={"Authorization": f"Bearer {gw.keys[who]}"}, timeout=30,
                      json={"model": model, "stream": True, "stream_options": {"include_usage": True},
                            "messages": [{"role": "user", "content": "hi"}], **body}) as r:
        assert r.status_code == 200, r.read()
        raw = b"".join(r.iter_raw()).decode()
    assert raw.endswith("data: [DONE]\n\n")
    return [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]


def keys_everywhere(obj) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys_everywhere(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys_everywhere(v)}
    return set()


def test_a_default_caller_gets_a_whole_reply_with_only_the_openai_basics(bare):
    r = chat(bare)
    assert r.status_code == 200, r.text
    body = r.json()
    sent = whole_reply("vendor-model")
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert set(body["choices"][0]) == {"index", "message", "finish_reason"}
    assert set(body["choices"][0]["message"]) == {"role", "content", "tool_calls"}
    assert not keys_everywhere(body) & set(STRIPPED)
    # nothing the caller needs changed
    assert body["choices"][0]["message"]["content"] == sent["choices"][0]["message"]["content"]
    assert body["choices"][0]["message"]["tool_calls"] == TOOL_CALLS and body["usage"] == USAGE
    assert "10.0.0.7" not in r.text and "node-17" not in r.text and "chain of thought" not in r.text


@pytest.mark.parametrize("model", ["vendor-model", "secret-model", "logprobs-model"])
def test_a_whole_reply_keeps_only_the_basics_on_every_guard_path_with_or_without_a_secret(guarded, model):
    """logprobs and vendor fields at every level (or logprobs alone), on a reply the detectors find
    nothing in and on one they mask: each path that writes a reply (typed decode, decoded dict,
    minimisation alone) strips them."""
    reply = whole_reply(model)
    sent = reply["choices"][0]["message"]["content"]
    masked = sent.replace(SECRET, "[REDACTED:github_token]")
    for who, extra, content in (("app", set(), masked), ("scorer", {"system_fingerprint"}, masked),
                                ("auditor", set(), sent)):
        r = chat(guarded, who, model=model)
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body) == {"id", "object", "created", "model", "choices", "usage"} | (extra & set(reply)), (who, body)
        assert set(body["choices"][0]) == {"index", "message", "finish_reason"}, (who, body)
        assert set(body["choices"][0]["message"]) == {"role", "content", "tool_calls"}, (who, body)
        assert not keys_everywhere(body) & (set(STRIPPED) - extra), (who, body)
        assert body["choices"][0]["message"]["content"] == content, who
        assert body["choices"][0]["message"]["tool_calls"] == TOOL_CALLS and body["usage"] == USAGE, who
        assert "10.0.0.7" not in r.text and "node-17" not in r.text and "chain of thought" not in r.text


def test_a_default_caller_gets_a_stream_with_none_of_the_vendor_fields(bare):
    events = streamed(bare)
    sent = stream_events("vendor-model")
    assert len(events) == len(sent)
    assert not keys_everywhere(events) & set(STRIPPED)
    for got, want in zip(events, sent):
        assert set(got) <= {"id", "object", "created", "model", "choices", "usage"}
        if want["choices"]:
            delta = {k: v for k, v in want["choices"][0]["delta"].items() if k not in VENDOR_MESSAGE}
            assert got["choices"][0]["delta"] == delta and got["choices"][0]["finish_reason"] == want["choices"][0]["finish_reason"]
    assert events[-1]["usage"] == USAGE


def test_scalar_extras_on_every_chunk_are_stripped_and_the_text_is_untouched(bare):
    events = streamed(bare, model="openai-model")
    sent = openai_events("openai-model")
    assert [e["choices"] for e in events] == [e["choices"] for e in sent]  # text that mentions the field stays
    assert all(set(e) == {"id", "object", "created", "model", "choices", "service_tier"} for e in events)


def test_an_upstream_error_event_in_a_stream_reaches_the_caller_as_it_came(bare):
    with httpx.stream("POST", bare.v1 + "/chat/completions", headers={"Authorization": f"Bearer {bare.keys['app']}"},
                      json={"model": "error-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        raw = b"".join(r.iter_raw())
    assert ERROR_EVENT in raw, raw  # not minimised to {}: the SDK raises it as an APIError
    assert b"fp_5e1c" not in raw and b"obfuscation" not in raw


def test_the_openai_sdk_reads_minimised_replies_and_streams(bare):
    c = openai.OpenAI(base_url=bare.v1, api_key=bare.keys["app"], max_retries=0)
    r = c.chat.completions.create(model="vendor-model", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == "Hi there, \"friend\" \u2713"
    assert r.choices[0].message.tool_calls[0].function.arguments == "{\"city\": \"Oslo\"}"
    assert r.usage.total_tokens == 12 and r.system_fingerprint is None and r.choices[0].logprobs is None
    assert not r.model_extra and not r.choices[0].model_extra and not r.choices[0].message.model_extra
    text, args = "", ""
    for chunk in c.chat.completions.create(model="vendor-model", stream=True, messages=[{"role": "user", "content": "hi"}]):
        assert chunk.system_fingerprint is None and not chunk.model_extra
        for choice in chunk.choices:
            assert choice.logprobs is None
            text += choice.delta.content or ""
            args += "".join(t.function.arguments or "" for t in choice.delta.tool_calls or ())
    assert text == "Hi there, \"friend\" \u2713" and json.loads(args) == {"city": "Oslo"}


def test_a_reply_with_nothing_to_strip_goes_out_as_the_bytes_it_came_in(bare):
    r = chat(bare, model="clean-model")
    assert r.status_code == 200 and r.content == CLEAN  # the upstream's own spacing: never decoded and re-encoded


def test_an_identity_granted_logprobs_sees_logprobs_and_nothing_else(granted):
    for who, sees in (("scorer", True), ("app", False)):
        body = chat(granted, who).json()
        choice = body["choices"][0]
        assert ("logprobs" in choice) is sees and (choice.get("logprobs") == LOGPROBS if sees else True)
        assert not keys_everywhere(body) & (set(STRIPPED) - {"logprobs"})
        assert choice["message"]["tool_calls"] == TOOL_CALLS and body["usage"] == USAGE
        events = streamed(granted, who)
        with_choice = [e for e in events if e["choices"]]
        assert all((e["choices"][0].get("logprobs") == LOGPROBS) is sees for e in with_choice)
        assert not keys_everywhere(events) & (set(STRIPPED) - {"logprobs"})


@pytest.mark.parametrize("ask, param", [({"logprobs": True}, "logprobs"), ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
                                        ({"top_logprobs": 3}, "top_logprobs")])
def test_asking_for_logprobs_without_a_grant_is_refused_naming_the_rule(bare, granted, upstream, ask, param):
    upstream.last = {}
    for gw in (bare, granted):
        r = chat(gw, "app", **ask)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "guardrail_violation" and err["param"] == param and "`expose`" in err["message"]
    assert upstream.last == {}  # refused before any upstream work
    assert chat(granted, "scorer", **ask).status_code == 200
    assert upstream.last.get("logprobs") == ask.get("logprobs")
    assert chat(bare, "app", logprobs=False).status_code == 200  # asking for none is fine


def test_a_vendor_field_in_a_streams_first_event_is_stripped_from_every_later_event_too(bare):
    events = streamed(bare, model="first-model")
    assert len(events) == 40 and "".join(e["choices"][0]["delta"].get("content") or "" for e in events).endswith(" t37")
    assert all(set(e) == {"id", "object", "created", "model", "choices"} for e in events), [sorted(e) for e in events]


def test_a_stop_reason_set_in_the_finish_chunk_is_stripped(bare):
    events = streamed(bare, model="stop-model")
    assert events[-1]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert not keys_everywhere(events) & {"stop_reason"}


def test_every_event_strips_a_field_that_first_shows_mid_stream_and_the_default_does_not(every_event):
    sampled = streamed(every_event, "app", model="late-model")
    checked = streamed(every_event, "auditor", model="late-model")
    assert len(sampled) == len(checked) == 40
    # the default's limit (README): event 30 is neither one of a stream's first 8 nor its finish
    assert sampled[30]["choices"][0]["delta"]["reasoning_content"] == "internal chain of thought"
    assert not keys_everywhere(checked) & {"reasoning_content"}
    assert [e["choices"][0]["delta"].get("content") for e in checked] == [e["choices"][0]["delta"].get("content") for e in sampled]


def test_a_stream_of_several_choices_is_checked_on_every_event(bare):
    # each choice closes with its own finish chunk, anywhere in the stream: no sample catches them all
    events = streamed(bare, model="choices-model", n=3)
    sent = choices_events("choices-model", 3)
    assert len(events) == len(sent) == 3 + 12 * 6 + 3
    assert not keys_everywhere(events) & {"reasoning_content", "stop_reason"}
    for got, want in zip(events, sent):  # every event minimised, and nothing else about it changed
        assert set(got) == {"id", "object", "created", "model", "choices"}, got
        (choice,), (wanted,) = got["choices"], want["choices"]
        wanted = {**{k: v for k, v in wanted.items() if k != "stop_reason"},
                  "delta": {k: v for k, v in wanted["delta"].items() if k != "reasoning_content"}}
        assert choice == wanted
    closes = [k for k, e in enumerate(events) if e["choices"][0]["finish_reason"]]
    assert [events[k]["choices"][0]["index"] for k in closes] == [0, 1, 2] and closes[0] < 40 < closes[1] < 70 < closes[2]
    texts = ["".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"][0]["index"] == i)
             for i in range(3)]
    assert texts == ["".join(f" c{i}t{t}" for t in range(12 * (i + 1))) for i in range(3)]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_agent_apis_carry_no_vendor_field_and_no_reasoning_a_caller_is_not_granted(bare, stream: bool) -> None:
    """Messages and Responses answers are re-encoded from the chat form: none of vLLM's vendor fields reaches
    their caller, and the reasoning the chat form strips unless exposed is no Responses reasoning item."""
    headers = {"Authorization": f"Bearer {bare.keys['app']}", "anthropic-version": "2023-06-01"}
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    got = {
        "messages": httpx.post(bare.url + "/v1/messages", headers=headers, timeout=30, json={
            "model": "vendor-model", "max_tokens": 20, "stream": stream, "tools": tools,
            "messages": [{"role": "user", "content": "hi"}]}),
        "responses": httpx.post(bare.v1 + "/responses", headers=headers, timeout=30, json={
            "model": "vendor-model", "input": "hi", "stream": stream, "store": False,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]}),
    }
    for api, r in got.items():
        assert r.status_code == 200, (api, r.text)
        assert "Oslo" in r.text  # the answer itself is there (the tool call's arguments)
        # the vendor fields' values (their names may be the API's own: stop_reason is Anthropic's)
        for value in ("fp_3f2a", "10.0.0.7", "node-17", "128009", "x_vendor", "kv_transfer", "prompt_token_ids",
                      "token_ids", "system_fingerprint", "internal chain of thought", "-0.25"):
            assert value not in r.text, (api, value, r.text[:400])
        assert '"type":"reasoning"' not in r.text.replace(" ", ""), (api, r.text[:400])
