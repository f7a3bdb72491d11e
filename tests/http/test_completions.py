"""Legacy completions (``POST /v1/completions``, issue 24 item 4) run the path chat runs: the openai SDK's
``client.completions.create``, whole and streamed, through a real gateway to the sim's own ``/v1/completions``.
Usage records say ``completions`` with the upstream's counts; scopes, token limits, the context window,
fallbacks and placement apply; input detectors read the prompt, output detectors and minimisation the
choices' ``text`` (a secret split across chunks too); a cut stream raises in the SDK; bad input is a shaped
400 that reaches no model."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import sluice.sim
from support import Gateway, LoopbackServer, QuietHandler, Sim, free_port, start_gateway, usage_rows

SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))  # the gateway counts as the sim does
SECRET = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"  # a GitHub token's shape: the detectors mask it
GUARDRAILS = {"rule_sets": [
    {"name": "masked", "match": {"identities": ["guarded"]}, "detectors": {"input": "mask", "output": "mask"},
     "input": {"max_n": None}},
    {"name": "blocking", "match": {"identities": ["strict"]}, "detectors": {"input": "block", "output": "mask"}},
    {"name": "open", "match": {"identities": ["app"]}, "input": {"max_n": None, "refuse_params": []}},  # n, logit_bias
], "expose": [{"identities": ["app"], "fields": ["logprobs"]}]}  # app may ask for logprobs: their bound is the schema's
LIMITS = {"rules": [{"name": "otpm", "match": {"model": "sim-otpm"}, "output_tokens_per_minute": 40},
                    {"name": "itpm", "match": {"model": "sim-itpm"}, "input_tokens_per_minute": 20}]}
REGISTRY = [{"name": "m", "versions": [
    {"version": "small", "upstream": "sim", "upstream_model": "sim-small", "approved": True, "context_window": 100},
    {"version": "gone", "upstream": "dead", "upstream_model": "sim-small", "approved": True}]}]
ROUTES = [{"name": "small", "match": {"models": ["m-small"]}, "targets": [{"target": "m@small"}]},
          {"name": "spill", "match": {"models": ["m-spill"]}, "targets": [{"target": "m@gone"}], "fallbacks": ["m@small"]}]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("completions")
    sim = Sim(tmp, **{"decode-ms": 5})  # tokens apart: a secret split over chunks arrives in separate reads
    dead = {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout": 0.5}
    served = {"upstream": "sim", "upstream_model": "sim-small", "tokenizer": SIM_TOKENIZER}
    scoped = {"owner": "sec@example.com", "models": ["sim-small"]}
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5}, dead],
        models=[{"name": n, **served} for n in ("sim-small", "sim-secret", "sim-otpm", "sim-itpm")]
        + [{"name": "sim-vllm", **served, "extra_params": "vllm"}],
        identities=[{"name": "app", "owner": "a@example.com", "models": ["sim-small", "sim-otpm", "sim-itpm", "sim-vllm",
                                                                        "m-*"]},
                    {"name": "guarded", **scoped}, {"name": "strict", **scoped}],
        extra={"guardrails": GUARDRAILS, "limits": LIMITS, "registry": REGISTRY, "routes": ROUTES},
    )
    yield g, sim
    g.stop()
    sim.stop()


def client(g: Gateway, who: str = "app") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0, timeout=20)


def complete(g: Gateway, who: str = "app", **body: object) -> httpx.Response:
    return g.post("/v1/completions", g.keys[who], json={"model": "sim-small", **body})


def raw_stream(g: Gateway, who: str, **body: object) -> str:
    with httpx.stream("POST", g.v1 + "/completions", headers={"Authorization": f"Bearer {g.keys[who]}"}, timeout=20,
                      json={"model": "sim-small", "stream": True, **body}) as r:
        assert r.status_code == 200, r.read()
        return b"".join(r.iter_raw()).decode()


def events(raw: str) -> list[dict]:
    return [json.loads(line[6:]) for line in raw.split("\n") if line.startswith("data: {")]


def streamed_text(raw: str) -> str:
    return "".join(c["text"] for e in events(raw) for c in e["choices"])


# -- the path -------------------------------------------------------------------------------------------------

def test_a_completion_through_the_sdk_answers_text_and_is_recorded_as_completions(rig) -> None:
    g, sim = rig
    since = time.time()
    r = client(g).completions.create(model="sim-small", prompt="Once upon a time", max_tokens=7)
    assert r.object == "text_completion" and len(r.choices) == 1
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].text.split()) == 7
    assert r.usage.prompt_tokens == 4 and r.usage.completion_tokens == 7  # the sim's tokenizer: one a word
    default = client(g).completions.create(model="sim-small", prompt="Once upon a time")
    assert default.usage.completion_tokens == 16  # the legacy API's default max_tokens
    rows = usage_rows(g, since, 2)
    assert sorted((x["endpoint"], x["prompt_tokens"], x["completion_tokens"], x["usage_source"], x["stream"])
                  for x in rows) == [("completions", 4, 7, "upstream", False), ("completions", 4, 16, "upstream", False)]


def test_a_streamed_completion_relays_every_token_and_usage_only_when_asked(rig) -> None:
    g, _ = rig
    since = time.time()
    whole = client(g).completions.create(model="sim-small", prompt="count to six", max_tokens=6)
    plain = list(client(g).completions.create(model="sim-small", prompt="count to six", max_tokens=6, stream=True))
    assert all(c.usage is None for c in plain)  # sluice asked for usage upstream, and kept it from this caller
    assert sum(1 for c in plain if c.choices and c.choices[0].text) == 6
    assert "".join(c.choices[0].text for c in plain if c.choices) == whole.choices[0].text
    assert plain[-1].choices[0].finish_reason == "length"
    asked = list(client(g).completions.create(model="sim-small", prompt="count to six", max_tokens=6, stream=True,
                                              stream_options={"include_usage": True}))
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 6 and not asked[-1].choices
    streams = [x for x in usage_rows(g, since, 3) if x["stream"]]
    assert [(x["endpoint"], x["completion_tokens"], x["usage_source"]) for x in streams] == \
        [("completions", 6, "upstream")] * 2


def test_several_prompts_with_n_choices_each_come_back_prompt_by_prompt(rig) -> None:
    g, _ = rig
    r = client(g).completions.create(model="sim-small", prompt=["alpha beta", "sim:say x|y"], n=2, max_tokens=3)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert [c.text for c in r.choices[2:]] == ["xy", "xy"] and all(len(c.text.split()) == 3 for c in r.choices[:2])
    assert r.usage.completion_tokens == 3 + 3 + 2 + 2


def test_a_model_outside_the_callers_scope_is_404_exactly_as_for_chat(rig) -> None:
    g, sim = rig
    before = sim.stats()["requests_total"]
    with pytest.raises(openai.NotFoundError):
        client(g).completions.create(model="sim-secret", prompt="hello")
    comp = complete(g, model="sim-secret", prompt="hello")
    chat = g.post("/v1/chat/completions", g.keys["app"],
                  json={"model": "sim-secret", "messages": [{"role": "user", "content": "hello"}]})
    assert comp.status_code == chat.status_code == 404 and comp.json() == chat.json()
    unknown = complete(g, model="no-such-model", prompt="hello")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == comp.json()["error"]["code"] == "model_not_found"
    assert sim.stats()["requests_total"] == before


def test_token_limits_count_a_completions_sequences_and_its_prompt(rig) -> None:
    g, sim = rig
    # output: max_tokens times max(n, best_of) per prompt, 16 when absent; 40 a minute
    two = complete(g, model="sim-otpm", prompt="a", max_tokens=10, n=2)  # 20
    assert two.status_code == 200 and two.json()["usage"]["completion_tokens"] == 20
    best = complete(g, model="sim-otpm", prompt="a", max_tokens=10, best_of=3)  # 30 more: over 40
    assert best.status_code == 429 and "output tokens per minute" in best.json()["error"]["message"]
    assert complete(g, model="sim-otpm", prompt="a", max_tokens=10).status_code == 200  # 30 of 40
    assert complete(g, model="sim-otpm", prompt="a").status_code == 429  # the default 16 does not fit in 10
    # input: token ids count one each, over every prompt; 20 a minute
    before = sim.stats()["completion_requests"]
    ids = complete(g, model="sim-itpm", prompt=[[1] * 6, [2] * 6])  # 12
    assert ids.status_code == 200 and ids.json()["usage"]["prompt_tokens"] == 12
    # a reserved request without max_tokens is sent with the limit it reserved: the API's default, explicit
    assert sim.stats()["last_completion"]["body"]["max_tokens"] == 16
    again = complete(g, model="sim-itpm", prompt=["one two three four five six", "one two three four five six"])
    assert again.status_code == 429 and "input tokens per minute" in again.json()["error"]["message"]
    assert sim.stats()["completion_requests"] == before + 1


def test_the_context_window_holds_each_prompt_and_a_failing_primary_falls_back(rig) -> None:
    g, sim = rig
    before = sim.stats()["completion_requests"]
    long = complete(g, model="m-small", prompt="word " * 200, max_tokens=5)  # ~250 tokens against 100
    default = complete(g, model="m-small", prompt="word " * 70)  # 88 tokens and the default 16
    for r in (long, default):
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "context_length_exceeded" and err["param"] == "prompt"
        assert "maximum context length is 100 tokens" in err["message"]
    assert "16 in the completion" in default.json()["error"]["message"]
    assert sim.stats()["completion_requests"] == before  # neither was sent
    # two prompts of 75 tokens each fit a window of 100 with 20 more, one at a time (their sum would not)
    batch = complete(g, model="m-small", prompt=["word " * 60, "word " * 60], max_tokens=20)
    assert batch.status_code == 200 and len(batch.json()["choices"]) == 2
    spill = complete(g, model="m-spill", prompt="hi", max_tokens=3)  # the primary is unreachable
    assert spill.status_code == 200 and spill.headers["x-sluice-route"] == "spill; target=m@small"


def test_a_models_vllm_extras_are_admitted_and_bounded_only_on_that_model(rig) -> None:
    g, _ = rig
    assert complete(g, model="sim-vllm", prompt="hi", max_tokens=2, top_k=5, min_p=0.1).status_code == 200
    refused = complete(g, model="sim-vllm", prompt="hi", top_k=-2)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "top_k"
    plain = complete(g, prompt="hi", top_k=5)
    assert plain.status_code == 400 and plain.json()["error"]["message"] == "Unrecognized request argument supplied: top_k"


def test_a_stream_the_upstream_cuts_raises_in_the_sdk_and_settles_what_was_produced(rig) -> None:
    g, sim = rig
    sim.faults(disconnect_after_chunks=3)
    since = time.time()
    got = []
    try:
        with pytest.raises(openai.APIError) as info:
            for chunk in client(g).completions.create(model="sim-small", prompt="go on", max_tokens=20, stream=True):
                got += [c.text for c in chunk.choices if c.text]
    finally:
        sim.clear_faults()
    assert "ended before it was complete" in str(info.value) and len(got) == 3
    rows = [x for x in usage_rows(g, since, 1) if x["stream"]]
    assert rows and rows[0]["status"] == 502 and rows[0]["error_code"] == "upstream_stream_cut"
    assert rows[0]["endpoint"] == "completions" and rows[0]["completion_tokens"] == 3 and rows[0]["prompt_tokens"] == 2


# -- guardrails -----------------------------------------------------------------------------------------------

def test_input_detectors_mask_each_prompt_and_the_suffix_before_the_upstream_sees_them(rig) -> None:
    g, sim = rig
    r = complete(g, "guarded", prompt=["plain words", "key AKIAIOSFODNN7EXAMPLE here"], suffix="mail me at jane@example.com",
                 max_tokens=2)
    assert r.status_code == 200, r.text
    seen = sim.stats()["last_completion"]
    assert seen["prompt"] == ["plain words", "key [REDACTED:aws_access_key] here"]
    assert "jane@example.com" not in seen["suffix"] and "[REDACTED:" in seen["suffix"]


def test_a_prompt_of_token_ids_is_refused_where_the_detectors_must_read_it(rig) -> None:
    g, sim = rig
    before = sim.stats()["completion_requests"]
    r = complete(g, "guarded", prompt=[101, 102, 103])
    assert r.status_code == 400 and r.json()["error"]["code"] == "guardrail_violation"
    assert r.json()["error"]["param"] == "prompt" and "token ids" in r.json()["error"]["message"]
    assert sim.stats()["completion_requests"] == before
    assert complete(g, prompt=[101, 102, 103], max_tokens=2).status_code == 200  # no detectors: it goes


def test_logprobs_are_refused_to_a_caller_who_may_not_see_them_even_zero_of_them(rig) -> None:
    g, sim = rig
    before = sim.stats()["completion_requests"]
    for n in (0, 5):  # a legacy completion asks with a number; 0 still returns the sampled token's
        r = complete(g, "guarded", prompt="hi", logprobs=n)
        assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text
        assert "not exposed" in r.json()["error"]["message"]
    assert sim.stats()["completion_requests"] == before
    assert complete(g, prompt="hi", max_tokens=1, logprobs=0).status_code == 200  # app is granted them


def test_a_blocking_rule_refuses_sensitive_data_in_a_prompt_without_echoing_it(rig) -> None:
    g, _ = rig
    r = complete(g, "strict", prompt=["fine", "my card is 4111 1111 1111 1111"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt[1]"
    assert "card_number" in r.json()["error"]["message"] and "4111" not in r.text
    # the rule set's other input rules hold for a completion too: its default max_n of 1, logit_bias refused
    for extra, param in (({"n": 2}, "n"), ({"logit_bias": {"1": 1}}, "logit_bias")):
        r = complete(g, "strict", prompt="fine", **extra)
        assert r.status_code == 400 and r.json()["error"]["code"] == "guardrail_violation", r.text
        assert r.json()["error"]["param"] == param


def test_a_secret_in_a_whole_completion_is_masked_and_null_vendor_fields_go(rig) -> None:
    g, sim = rig
    # split in the prompt, so the input detectors cannot see it: only the output guard can
    r = client(g, "guarded").completions.create(model="sim-small", prompt=f"sim:say token |{SECRET[:14]}|{SECRET[14:]}| end")
    assert sim.stats()["last_completion"]["prompt"].count("|") == 3  # reached the model unmasked
    assert r.choices[0].text == "token [REDACTED:github_token] end"
    body = complete(g, "guarded", prompt=f"sim:say token |{SECRET[:14]}|{SECRET[14:]}| end").json()
    assert set(body["choices"][0]) == {"index", "text", "finish_reason"}  # logprobs and stop_reason: null, gone


def test_a_secret_split_across_streamed_chunks_is_masked_and_no_piece_leaks(rig) -> None:
    g, _ = rig
    say = "sim:say here is |AKIAIOSF|ODNN7EXAMPLE| and more text after it"
    raw = raw_stream(g, "guarded", prompt=say)
    assert streamed_text(raw) == "here is [REDACTED:aws_access_key] and more text after it"
    assert "AKIAIOSF" not in raw and "ODNN7EXAMPLE" not in raw and raw.endswith("data: [DONE]\n\n")
    sdk = client(g, "guarded").completions.create(model="sim-small", prompt=say, stream=True)
    assert "".join(c.choices[0].text for c in sdk if c.choices) == streamed_text(raw)
    # several choices in one stream are each read on their own
    two = raw_stream(g, "guarded", prompt=[say, say], n=2)
    for i in range(4):
        assert "".join(c["text"] for e in events(two) for c in e["choices"] if c["index"] == i) == streamed_text(raw)
    assert "ODNN7EXAMPLE" not in two


# -- minimisation against a vLLM-shaped upstream that sets every vendor field ---------------------------------

VENDOR_REPLY = {"system_fingerprint": "fp_3f2a", "kv_transfer_params": {"remote_host": "10.0.0.7"},
                "prompt_token_ids": [1, 2, 3], "x_vendor_trace": "node-17"}
VENDOR_CHOICE = {"logprobs": {"tokens": ["a"], "token_logprobs": [-0.5]}, "stop_reason": 128009,
                 "prompt_logprobs": [None, {"1": {"logprob": -1.5}}], "token_ids": [9, 8]}
PIECES = ["the token ", SECRET[:12], SECRET[12:], " end"]
USAGE = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


class FakeVendor:
    """Answers ``/v1/completions`` like vLLM with every vendor field set, whole or streamed a piece per write."""

    def __init__(self) -> None:
        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                head = {"id": "cmpl-1", "object": "text_completion", "created": 1700000000, "model": req["model"],
                        **VENDOR_REPLY}
                if not req.get("stream"):
                    choice = {"index": 0, "text": "".join(PIECES), "finish_reason": "stop", **VENDOR_CHOICE}
                    self.send_body(json.dumps({**head, "choices": [choice], "usage": USAGE}).encode())
                    return
                chunks = [{**head, "choices": [{"index": 0, "text": p, "finish_reason": None, **VENDOR_CHOICE}]}
                          for p in PIECES]
                chunks += [{**head, "choices": [{"index": 0, "text": "", "finish_reason": "stop", **VENDOR_CHOICE}]},
                           {**head, "choices": [], "usage": USAGE}]
                self.send_events([b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks] + [b"data: [DONE]\n\n"])

        self.server = LoopbackServer(Handler)


@pytest.fixture(scope="module")
def vendor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """``plain``: minimisation only; ``masked``: output detectors (the typed whole-reply path); ``scorer``:
    detectors and a grant of ``system_fingerprint`` (the decoded one)."""
    fake = FakeVendor()
    ident = {"owner": "ml@example.com", "models": ["vendor"]}
    g = start_gateway(
        tmp_path_factory.mktemp("completions-vendor"), upstreams=[{"name": "fake", "base_url": fake.server.url + "/v1"}],
        models=[{"name": "vendor", "upstream": "fake"}],
        identities=[{"name": who, **ident} for who in ("plain", "masked", "scorer")],
        extra={"guardrails": {
            "rule_sets": [{"name": "m", "match": {"identities": ["masked", "scorer"]}, "detectors": {"output": "mask"}}],
            "expose": [{"identities": ["scorer"], "fields": ["system_fingerprint"]}]}})
    yield g
    g.stop()
    fake.server.stop()


def keys_everywhere(obj: object) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in keys_everywhere(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in keys_everywhere(v)}
    return set()


VENDOR_KEYS = set(VENDOR_REPLY) | set(VENDOR_CHOICE) | {"remote_host", "tokens"}


@pytest.mark.parametrize("who", ["plain", "masked", "scorer"])
def test_a_whole_completion_keeps_only_the_basics_and_its_text_is_masked_where_the_rules_say(vendor, who) -> None:
    r = complete(vendor, who, model="vendor", prompt="hi")
    assert r.status_code == 200, r.text
    body = r.json()
    kept = {"system_fingerprint"} if who == "scorer" else set()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"} | kept
    assert set(body["choices"][0]) == {"index", "text", "finish_reason"}
    assert body["choices"][0]["text"] == ("".join(PIECES) if who == "plain" else "the token [REDACTED:github_token] end")
    assert body["usage"] == USAGE


@pytest.mark.parametrize("who", ["plain", "masked", "scorer"])
def test_a_streamed_completion_carries_no_vendor_field_and_its_split_secret_is_masked(vendor, who) -> None:
    raw = raw_stream(vendor, who, model="vendor", prompt="hi", stream_options={"include_usage": True})
    got = events(raw)
    kept = {"system_fingerprint"} if who == "scorer" else set()
    assert all(not (keys_everywhere(e) & (VENDOR_KEYS - kept - {"logprobs"})) for e in got), got
    assert all(c.get("logprobs") is None for e in got for c in e["choices"])  # a null says nothing and may stay
    assert got[-1]["usage"] == USAGE and raw.endswith("data: [DONE]\n\n")
    if who == "plain":
        assert streamed_text(raw) == "".join(PIECES)
    else:
        assert streamed_text(raw) == "the token [REDACTED:github_token] end"
        assert PIECES[1] not in raw and PIECES[2] not in raw


# -- placement ------------------------------------------------------------------------------------------------

def test_prefix_affinity_places_prompts_that_share_a_prefix_on_the_replica_that_cached_it(tmp_path: Path) -> None:
    sims = [Sim(tmp_path, **{"cache-blocks": 4096, "block-tokens": 16}) for _ in range(3)]
    g = start_gateway(tmp_path, identities=[{"name": "app", "owner": "o", "models": ["*"]}],
                      models=[{"name": "m", "upstream": "pool", "upstream_model": "sim-small"}],
                      upstreams=[{"name": "pool", "base_url": sims[0].url + "/v1",
                                  "replicas": [s.url + "/v1" for s in sims[1:]], "placement": {"policy": "prefix_affinity"}}])
    try:
        cached = []
        for question in range(5):
            for group in range(4):
                prompt = " ".join(f"g{group}w{i}" for i in range(400)) + f" question {question} please"
                r = g.post("/v1/completions", g.keys["app"], json={"model": "m", "prompt": prompt, "max_tokens": 1})
                assert r.status_code == 200, r.text
                cached.append(r.json()["usage"]["prompt_tokens_details"]["cached_tokens"])
        assert sum(s.stats()["completion_requests"] for s in sims) == 20
        assert cached[:4] == [0, 0, 0, 0] and all(c >= 400 for c in cached[4:]), cached
    finally:
        g.stop()
        for s in sims:
            s.stop()


# -- bad input ------------------------------------------------------------------------------------------------

BAD: list[tuple[str, dict, str | None]] = [  # (case, body beside the model, the param the 400 names)
    ("prompt missing", {"max_tokens": 3}, "prompt"),
    ("prompt a number", {"prompt": 5}, "prompt"),
    ("prompt an object", {"prompt": {"text": "hi"}}, "prompt"),
    ("prompt empty list", {"prompt": []}, "prompt"),
    ("prompt mixed", {"prompt": ["a", 1]}, "prompt"),
    ("prompt empty token list", {"prompt": [[]]}, "prompt"),
    ("prompt negative token", {"prompt": [1, -1]}, "prompt"),
    ("prompt token past int32", {"prompt": [2**31]}, "prompt"),
    ("max_tokens a string", {"prompt": "hi", "max_tokens": "ten"}, "max_tokens"),
    ("max_tokens zero", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("max_tokens past int32", {"prompt": "hi", "max_tokens": 2**31}, "max_tokens"),
    ("n huge", {"prompt": "hi", "n": 10**6}, "n"),
    ("n zero", {"prompt": "hi", "n": 0}, "n"),
    ("best_of huge", {"prompt": "hi", "best_of": 129}, "best_of"),
    ("logprobs 6", {"prompt": "hi", "logprobs": 6}, "logprobs"),
    ("logprobs negative", {"prompt": "hi", "logprobs": -1}, "logprobs"),
    ("logprobs a bool", {"prompt": "hi", "logprobs": True}, "logprobs"),
    ("echo a string", {"prompt": "hi", "echo": "yes"}, "echo"),
    ("suffix a number", {"prompt": "hi", "suffix": 5}, "suffix"),
    ("stop too many", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("temperature too high", {"prompt": "hi", "temperature": 3}, "temperature"),
    ("seed past int64", {"prompt": "hi", "seed": 2**63}, "seed"),
    ("logit_bias out of range", {"prompt": "hi", "logit_bias": {"50256": 101}}, "logit_bias"),
    ("stream a string", {"prompt": "hi", "stream": "yes"}, "stream"),
    ("stream_options unknown", {"prompt": "hi", "stream": True, "stream_options": {"bogus": 1}}, "stream_options.bogus"),
    ("chat's messages", {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}, "messages"),
]


@pytest.mark.parametrize(("case", "body", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_shaped_400_naming_the_parameter_and_reaches_no_model(rig, case, body, param) -> None:
    g, sim = rig
    before = sim.stats()["requests_total"]
    r = complete(g, **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["code"] != "guardrail_violation"  # the schema's refusal, not a rule's
    assert err["param"] is not None and err["param"].startswith(param), err  # prompt[1]: the item
    assert "Traceback" not in r.text and sim.url not in r.text and g.keys["app"] not in r.text
    assert sim.stats()["requests_total"] == before


def test_parameters_at_their_bounds_reach_the_model(rig) -> None:
    g, _ = rig
    for extra in ({"n": 128, "seed": 2**63 - 1}, {"logit_bias": {"0": -100, "999999999": 100}, "best_of": 2},
                  {"echo": True, "stop": ["\n", "."], "prompt": [0, 2**31 - 1]}, {"logprobs": 5}, {"logprobs": 0}):
        r = complete(g, **{"prompt": "hi", "max_tokens": 1, **extra})
        assert r.status_code == 200, (extra, r.text[:300])
