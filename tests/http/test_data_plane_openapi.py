"""The data plane publishes its contract as OpenAPI 3.1 at /v1/openapi.json, to data-plane callers
only, made from the wire structs the decode stage uses; it lists every route the listener serves;
a property-based fuzz of every operation (schemathesis) against a gateway in front of the sim finds
no 5xx and no answer outside the contract, streamed answers included; without a key, every route
that needs one answers 401 in the OpenAI envelope."""

from __future__ import annotations

import re

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from sluice.identity.exchange import ACCESS_TOKEN
from sluice.pipeline.openapi import OPERATIONS, document
from support import start_gateway

CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
ENVELOPE = {"message", "type", "param", "code"}
ANTHROPIC = {"type", "message"}  # the Messages routes answer errors in Anthropic's shape
JSONRPC = {"code", "message", "data"}  # the MCP routes answer every error as a JSON-RPC error object


def envelope_of(path: str) -> set[str]:
    if path == "/mcp" or path.startswith("/mcp/"):
        return JSONRPC
    return ANTHROPIC if path.startswith("/v1/messages") else ENVELOPE


@pytest.fixture(scope="module")
def data(sim, tmp_path_factory):
    """A gateway of its own: the fuzz spends limits and trips the failure gates."""
    g = start_gateway(
        tmp_path_factory.mktemp("dpfuzz"),
        upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5, "total_timeout": 20}],
        # extra parameters on one model: a refused body then meets the model's wider decoder as well
        models=[{"name": "sim-small", "upstream": "sim", "extra_params": "vllm"}, {"name": "sim-embed", "upstream": "sim"}],
        identities=[{"name": "app", "owner": "a@example.com", "models": ["sim-small", "sim-embed"]}],
    )
    yield g
    g.stop()


@pytest.fixture(scope="module")
def doc(data):
    r = httpx.get(data.url + "/v1/openapi.json", headers={"Authorization": f"Bearer {data.keys['app']}"})
    assert r.status_code == 200
    return r.json()


@pytest.fixture(scope="module")
def contract(doc):
    return schemathesis.openapi.from_dict(doc)


def test_the_document_is_served_only_to_a_data_plane_caller(data, doc):
    assert doc["openapi"] == "3.1.0"
    for headers in ({}, {"Authorization": "Bearer slk_dev_not-a-key"}, {"Authorization": f"Bearer {data.admin_key}"}):
        r = httpx.get(data.url + "/v1/openapi.json", headers=headers)
        assert r.status_code == 401 and set(r.json()["error"]) == ENVELOPE, headers
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    body = doc["components"]["schemas"]["ChatCompletionRequest"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert set(body["required"]) == {"model", "messages"} and body["additionalProperties"] is False
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "401", "404", "413", "415", "429", "502", "503", "504"} <= set(chat["responses"])
    assert doc["paths"]["/healthz"]["get"]["security"] == [] and doc["security"] == [{"bearer": []}]
    token = doc["components"]["schemas"]["TokenRequest"]  # RFC 8693's further fields are read, as strings
    assert token["additionalProperties"] == {"type": "string"} and "subject_token" in token["required"]


def test_the_document_lists_exactly_the_routes_the_listener_serves(data, doc):
    """Per documented path, the router's 405 names its methods: they must be the documented ones; and
    a route the document has no entry for stops the gateway's start (the generator refuses it)."""
    key = {"Authorization": f"Bearer {data.keys['app']}"}
    for path, ops in doc["paths"].items():
        r = httpx.request("PATCH", data.url + re.sub(r"\{[a-z_]+\}", "x_1", path), headers=key)
        assert r.status_code == 405, path
        assert set(r.headers["Allow"].split(", ")) == {m.upper() for m in ops}, path
    assert {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops} == set(OPERATIONS)
    with pytest.raises(LookupError, match="POST /v1/audio/speech"):
        document([("POST", "/v1/audio/speech", None)])


def test_a_streamed_chat_completion_answers_the_documented_event_stream(data, contract):
    case = contract["/v1/chat/completions"]["POST"].Case(
        body={"model": "sim-small", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4})
    r = case.call(base_url=data.url, headers={"Authorization": f"Bearer {data.keys['app']}"}, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"][0].startswith("text/event-stream")
    assert r.text.rstrip().endswith("data: [DONE]")
    case.validate_response(r, checks=CHECKS)


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", b'[{"model": "sim-small"}]'),  # no object, with a model that has extra parameters
    ("/v1/chat/completions", b'{"model": 5, "messages": []}'),  # a model that is no string, likewise
    ("/v1/tool-approvals/apv_x/redeem", b'{"arguments": ' + b"[" * 5000 + b"]" * 5000 + b"}"),  # deeper than msgspec goes
], ids=["chat-array", "chat-model-number", "redeem-deep"])
def test_bodies_that_answered_500_are_refused_with_400(data, path, body):
    r = httpx.post(data.url + path, content=body, headers={"Authorization": f"Bearer {data.keys['app']}"})
    assert r.status_code == 400 and set(r.json()["error"]) == ENVELOPE, r.text


# The operations come from the document's table (the test above holds it to the router's).
OPERATION_KEYS = sorted(OPERATIONS)
SECURED = [k for k in OPERATION_KEYS if not OPERATIONS[k].public]
# Invalid examples need something to break: a body or a credential (the public GETs have neither).
CASES = [pytest.param(m, p, GenerationMode.POSITIVE, id=f"{m}-{p}-valid") for m, p in OPERATION_KEYS] + [
    pytest.param(m, p, GenerationMode.NEGATIVE, id=f"{m}-{p}-invalid") for m, p in OPERATION_KEYS
    if OPERATIONS[(m, p)].body is not None or not OPERATIONS[(m, p)].public]


def served_values(path: str, key: str) -> list[dict | None] | None:
    """What some examples get instead of generated fields: else nearly every model call is a 404 for a
    model nobody serves, few ask for a stream, and every token exchange presents a made-up key."""
    if path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages", "/v1/messages/count_tokens"):
        streams = path.endswith("completions") or path == "/v1/messages"
        return [None, {"model": "sim-small"}, *([{"model": "sim-small", "stream": True}] if streams else [])]
    if path == "/v1/token":
        return [None, {"subject_token": key, "subject_token_type": ACCESS_TOKEN, "audience": "sluice"}]
    return None


def fuzz(operation, base_url: str, headers: dict[str, str], *, mode: GenerationMode, examples: int = 25,
         served: list[dict | None] | None = None, status: int | None = None,
         envelope: set[str] | None = ENVELOPE) -> None:
    """support.fuzz_within_contract's checks (derandomized), with ``served`` values merged into some generated
    bodies and, if given, one ``status`` for every answer. Its own function: derandomize seeds from the
    source, so widening the shared one would change the examples the other fuzzes run."""

    @given(case=operation.as_strategy(generation_mode=mode), merge=st.sampled_from(served or [None]))
    @settings(max_examples=examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate])
    def run(case: schemathesis.Case, merge: dict | None) -> None:
        if merge is not None and isinstance(case.body, dict):
            case.body.update(merge)
        response = case.call(base_url=base_url, headers=headers, timeout=30)
        case.validate_response(response, checks=CHECKS)
        if status is not None:
            assert response.status_code == status, (response.status_code, response.text)
        if response.status_code >= 400 and envelope:
            assert set(response.json()["error"]) == envelope, response.text

    run()


# About 25 valid and 25 invalid examples for each of the 12 operations keep the whole run well under a
# minute on a loaded 2-core machine; derandomized, so a failure reproduces.
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_no_input_to_a_data_plane_route_gets_a_5xx_or_an_answer_outside_the_contract(contract, data, method, path,
                                                                                    mode):
    fuzz(contract[path][method], data.url, {"Authorization": f"Bearer {data.keys['app']}"}, mode=mode,
         served=served_values(path, data.keys["app"]),
         envelope=None if path == "/readyz" else envelope_of(path))  # readyz: 503 is its own body


@pytest.mark.parametrize(("method", "path"), SECURED)
def test_without_a_key_every_route_that_needs_one_answers_401_in_the_envelope(contract, data, method, path):
    fuzz(contract[path][method], data.url, {}, mode=GenerationMode.POSITIVE, examples=10, status=401,
         envelope=envelope_of(path))
