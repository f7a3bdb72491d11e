"""A model that names its tokenizer (``models[].tokenizer``, a local tokenizer.json) is counted with
it wherever sluice estimates a prompt: the limits' reservation and the usage of a stream its
caller abandoned. Against the sim, which ships such a file and counts with it, both are exact;
a model without one is still estimated at four characters a token."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

import sluice.sim
from support import Sim, start_gateway

SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))
# Short words and punctuation: four characters a token is far off for the sim's word tokenizer.
PROMPT = [{"role": "system", "content": "Be brief; be kind: no jargon, no fluff (please)."},
          {"role": "user", "content": [{"type": "text", "text": "Is it OK?"}, {"type": "text", "text": "Say yes, or no!"}]},
          {"role": "assistant", "content": "Yes."},
          {"role": "user", "content": "Why? Tell me, in a word: why... ok, in two."}]


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokenizer")
    s = Sim(tmp, **{"decode-ms": 2})  # paced, so a client can leave mid-stream
    limited = {"model": "m-limited"}
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": s.url + "/v1"}],
        models=[{"name": "m-tok", "upstream": "sim", "upstream_model": "sim-small", "tokenizer": SIM_TOKENIZER},
                {"name": "m-limited", "upstream": "sim", "upstream_model": "sim-small", "tokenizer": SIM_TOKENIZER},
                {"name": "m-embed", "upstream": "sim", "upstream_model": "sim-embed", "tokenizer": SIM_TOKENIZER},
                {"name": "m-chars", "upstream": "sim", "upstream_model": "sim-small"}],
        identities=[{"name": "a", "owner": "o", "models": ["*"]}],
        extra={"limits": {"key_prefix": f"k{uuid.uuid4().hex[:8]}:", "rules": [
            {"name": "tiny", "match": limited, "input_tokens_per_minute": 5},
            {"name": "tiny-embed", "match": {"model": "m-embed"}, "input_tokens_per_minute": 5}]}})
    yield g, s
    g.stop()
    s.stop()


def sim_count(s: Sim, path: str, body: dict) -> int:
    """The prompt tokens the sim itself reports for this body."""
    r = httpx.post(s.url + path, json=body, timeout=10)
    r.raise_for_status()
    return r.json()["usage"]["prompt_tokens"]


def needs(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    return int(r.json()["error"]["message"].split("this request needs ")[1].split(".")[0])


def test_a_reservation_with_the_models_tokenizer_is_exactly_what_the_sim_counts(rig):
    g, s = rig
    body = {"messages": PROMPT, "max_tokens": 2}
    counted = sim_count(s, "/v1/chat/completions", {"model": "sim-small", **body})
    chars = sum(len(p["text"]) if isinstance(p, dict) else len(p) for m in PROMPT
                for p in (m["content"] if isinstance(m["content"], list) else [m["content"]]))
    assert (chars + 3) // 4 + 4 * len(PROMPT) != counted  # the old estimate would not do
    assert needs(g.post("/v1/chat/completions", g.keys["a"], json={"model": "m-limited", **body})) == counted
    inputs = ["a, b; c!", "Hello, world... again?"]
    counted = sim_count(s, "/v1/embeddings", {"model": "sim-embed", "input": inputs})
    assert needs(g.post("/v1/embeddings", g.keys["a"], json={"model": "m-embed", "input": inputs})) == counted


def abandon(g, model: str) -> dict:
    """Stream a long answer and leave after five tokens; the usage row the gateway recorded."""
    since = time.time()
    received = 0
    with httpx.stream("POST", g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['a']}"},
                      json={"model": model, "messages": PROMPT, "max_tokens": 2000, "stream": True}, timeout=10) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if '"content":"' in line and '"content":""' not in line:
                received += 1
            if received == 5:
                break
    deadline = time.time() + 5
    while time.time() < deadline:
        rows = [x for x in g.admin("GET", f"/admin/usage?since={since}&limit=1000").json()["data"]
                if x["stream"] and x["model"] == model]
        if rows:
            return rows[0]
        time.sleep(0.1)
    raise AssertionError(f"no usage row for the abandoned stream on {model}")


def test_a_stream_abandoned_by_its_caller_is_charged_the_prompt_tokens_the_sim_counted(rig):
    g, s = rig
    before = s.stats()["prompt_tokens"]
    row = abandon(g, "m-tok")
    counted = s.stats()["prompt_tokens"] - before
    assert row["status"] == 499 and row["usage_source"] == "estimated", row
    assert row["prompt_tokens"] == counted, (row["prompt_tokens"], counted)
    # without a tokenizer: still an estimate, four characters a token and four a message
    before = s.stats()["prompt_tokens"]
    row = abandon(g, "m-chars")
    assert row["prompt_tokens"] != s.stats()["prompt_tokens"] - before
