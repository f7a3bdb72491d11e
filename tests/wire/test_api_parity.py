"""One pipeline, three wires (issue 24): the same work through chat completions, the Messages API and
the Responses API records the same tokens and the same cost, and the agents' real request shapes
(Claude Code's and Codex's, the golden files written from their documentation) replayed through sluice
stream back in a grammar the validators accept."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest

import sluice.sim

sys.path.insert(0, str(Path(__file__).resolve().parent))
import messages_grammar  # noqa: E402
import responses_grammar  # noqa: E402
from support import Gateway, Sim, start_gateway  # noqa: E402

GOLDEN = Path(__file__).parent / "golden"
SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))
PRICE = {"input": 3_000_000.0, "output": 15_000_000.0}  # per million tokens: 3.00 and 15.00


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("parity")
    sim = Sim(tmp)
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                      models=[{"name": "sim-small", "upstream": "sim", "tokenizer": SIM_TOKENIZER}],
                      identities=[{"name": "app", "owner": "o@example.com", "models": ["sim-small"]}],
                      extra={"prices": {"sim-small": PRICE}})
    yield g
    g.stop()
    sim.stop()


def _record(g: Gateway, request_id: str) -> dict:
    for _ in range(50):  # the ledger writes in batches, a moment after the answer
        rows = g.admin("GET", "/admin/usage", params={"limit": 200}).json()["data"]
        found = [r for r in rows if r["request_id"] == request_id]
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no usage record for {request_id}")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_same_work_costs_the_same_tokens_and_money_through_every_api(gw, stream: bool) -> None:
    key = gw.keys["app"]
    chat = openai.OpenAI(base_url=gw.v1, api_key=key, max_retries=0)
    claude = anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)
    system, ask, n = "Be brief.", "Tell me a story about a lighthouse.", 9
    ids, texts = {}, {}
    if stream:
        with chat.chat.completions.with_streaming_response.create(
                model="sim-small", max_tokens=n, stream=True, stream_options={"include_usage": True},
                messages=[{"role": "system", "content": system}, {"role": "user", "content": ask}]) as r:
            ids["chat"] = r.headers["x-request-id"]
            texts["chat"] = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                                    for line in r.iter_lines() if line.startswith("data: {") and '"choices":[{' in line)
        with claude.messages.with_streaming_response.create(
                model="sim-small", max_tokens=n, system=system, stream=True,
                messages=[{"role": "user", "content": ask}]) as r:
            ids["messages"] = r.headers["x-request-id"]
            events = messages_grammar.parse_sse(r.read())
            texts["messages"] = "".join(e[1]["delta"].get("text", "") for e in events if e[0] == "content_block_delta")
        with chat.responses.with_streaming_response.create(model="sim-small", max_output_tokens=n, instructions=system,
                                                           input=ask, stream=True, store=False) as r:
            ids["responses"] = r.headers["x-request-id"]
            events = responses_grammar.parse_sse(r.read())
            texts["responses"] = "".join(e[1]["delta"] for e in events if e[0] == "response.output_text.delta")
    else:
        r = chat.chat.completions.with_raw_response.create(
            model="sim-small", max_tokens=n, messages=[{"role": "system", "content": system}, {"role": "user", "content": ask}])
        ids["chat"], texts["chat"] = r.headers["x-request-id"], r.parse().choices[0].message.content
        r = claude.messages.with_raw_response.create(model="sim-small", max_tokens=n, system=system,
                                                     messages=[{"role": "user", "content": ask}])
        ids["messages"], texts["messages"] = r.headers["x-request-id"], r.parse().content[0].text
        r = chat.responses.with_raw_response.create(model="sim-small", max_output_tokens=n, instructions=system,
                                                    input=ask, store=False)
        ids["responses"], texts["responses"] = r.headers["x-request-id"], r.parse().output_text
    assert texts["chat"] and texts["chat"] == texts["messages"] == texts["responses"], texts
    rows = {api: _record(gw, rid) for api, rid in ids.items()}
    seen = {api: (r["prompt_tokens"], r["completion_tokens"], r["cost_nanos"], r["usage_source"]) for api, r in rows.items()}
    assert seen["chat"] == seen["messages"] == seen["responses"], seen
    prompt, completion, cost, source = seen["chat"]
    assert completion == n and source == "upstream" and cost == prompt * 3_000_000_000 + completion * 15_000_000_000
    assert {api: r["api"] for api, r in rows.items()} == {"chat": "chat", "messages": "messages", "responses": "responses"}


def _goldens(kind: str) -> list[Path]:
    """The golden requests that stand alone (a chained turn needs its chain in this gateway's memory:
    chains are proven in test_responses_gateway.py)."""
    return sorted(p for p in (GOLDEN / kind).glob("*.json")
                  if "previous_response_id" not in json.loads(p.read_text()).get("responses", {}))


@pytest.mark.parametrize("path", _goldens("requests"), ids=lambda p: p.stem)
def test_claude_code_shapes_replayed_through_sluice_stream_in_anthropics_grammar(gw, path: Path) -> None:
    golden = json.loads(path.read_text())
    body = {**golden["anthropic"], "model": "sim-small", "stream": True}
    headers = {"x-api-key": gw.keys["app"], "anthropic-version": "2023-06-01",
               **{k: v for k, v in golden.get("headers", {}).items() if k.startswith("anthropic-beta")}}
    if path.stem.startswith("count_tokens"):
        body.pop("stream"), body.pop("max_tokens", None)
        r = httpx.post(gw.url + "/v1/messages/count_tokens", json=body, headers=headers, timeout=15)
        assert r.status_code == 200 and r.json()["input_tokens"] > 0, r.text
        return
    r = httpx.post(gw.url + "/v1/messages", json=body, headers=headers, timeout=15)
    assert r.status_code == 200, r.text
    assert messages_grammar.validate(messages_grammar.parse_sse(r.content)) == "message_stop"


@pytest.mark.parametrize("path", _goldens("responses"), ids=lambda p: p.stem)
def test_codex_shapes_replayed_through_sluice_stream_in_the_responses_grammar(gw, path: Path) -> None:
    golden = json.loads(path.read_text())
    body = {**golden["responses"], "model": "sim-small", "stream": True}
    r = httpx.post(gw.v1 + "/responses", json=body, headers={"Authorization": f"Bearer {gw.keys['app']}"}, timeout=15)
    assert r.status_code == 200, r.text
    assert responses_grammar.validate(responses_grammar.parse_sse(r.content)) in ("response.completed", "response.incomplete")
