"""vLLM's tools work through sluice unchanged: the data plane serves GET /health, and each
model passes through the extra request parameters its upstream accepts (a built-in `vllm`
set, OpenAI's strict set by default, or an explicit list); anything else is still refused
with OpenAI's 400."""

from __future__ import annotations

import httpx
import openai
import pytest

from support import start_gateway

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def g(sim, tmp_path_factory):
    g = start_gateway(
        tmp_path_factory.mktemp("vllm-extras"),
        upstreams=[{"name": "strict", "base_url": sim.url + "/v1"},
                   {"name": "vllm", "base_url": sim.url + "/v1", "extra_params": "vllm"}],
        models=[{"name": "plain", "upstream": "strict", "upstream_model": "sim-small"},
                {"name": "open", "upstream": "vllm", "upstream_model": "sim-small"},
                {"name": "listed", "upstream": "strict", "upstream_model": "sim-small", "extra_params": ["top_k"]},
                {"name": "narrowed", "upstream": "vllm", "upstream_model": "sim-small", "extra_params": "openai"}],
        identities=[{"name": "app", "owner": "a@example.com", "models": ["*"]}],
    )
    yield g
    g.stop()


def client(g) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)


def test_the_data_plane_answers_get_health_with_200_and_no_credential(g):
    assert httpx.get(g.url + "/health").status_code == 200


def test_ignore_eos_reaches_a_vllm_upstream_which_then_generates_exactly_max_tokens(g):
    out = client(g).chat.completions.create(model="open", messages=HI, max_tokens=40, extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 40 and out.choices[0].finish_reason == "length"


def test_min_tokens_reaches_a_vllm_upstream_which_does_not_stop_before_it(g):
    natural = client(g).chat.completions.create(model="open", messages=HI, max_tokens=4000)
    assert natural.choices[0].finish_reason == "stop"  # the sim's own length for this prompt
    want = natural.usage.completion_tokens + 5
    out = client(g).chat.completions.create(model="open", messages=HI, max_tokens=want + 50,
                                            extra_body={"min_tokens": want})
    assert out.usage.completion_tokens == want and out.choices[0].finish_reason == "stop"


def upstream_saw(sim) -> dict:
    """The body of the last chat request the sim received, as it arrived."""
    return sim.stats()["last_chat"]["body"]


def refused_before_upstream(g, sim, model: str, param: str, value) -> None:
    """``param`` is refused with OpenAI's 400 and the upstream never hears of the request."""
    before = sim.stats()["requests_total"]
    with pytest.raises(openai.BadRequestError) as err:
        client(g).chat.completions.create(model=model, messages=HI, max_tokens=5, extra_body={param: value})
    assert err.value.body["param"] == param
    assert sim.stats()["requests_total"] == before


def test_vllm_sampling_and_structured_output_parameters_pass_streaming_and_not(g, sim):
    extra = {"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False},
             "guided_json": {"type": "object", "properties": {"a": {"type": "string"}}}, "skip_special_tokens": True}
    out = client(g).chat.completions.create(model="open", messages=HI, max_tokens=5, extra_body=extra)
    assert out.choices[0].message.content
    seen = upstream_saw(sim)
    assert {k: seen.get(k) for k in extra} == extra and seen["model"] == "sim-small" and not seen.get("stream")
    stream = client(g).chat.completions.create(model="open", messages=HI, max_tokens=5, stream=True,
                                               extra_body={**extra, "ignore_eos": True})
    assert sum(1 for c in stream if c.choices and c.choices[0].delta.content) == 5
    seen = upstream_saw(sim)
    assert {k: seen.get(k) for k in extra} == extra and seen["ignore_eos"] is True and seen["stream"] is True
    refused_before_upstream(g, sim, "open", "logits_processors", ["x"])  # not in the vllm set: never sent


def test_vllm_continuous_usage_stats_in_stream_options_passes_as_guidellm_sends_it(g):
    stream = client(g).chat.completions.create(model="open", messages=HI, max_tokens=5, stream=True,
                                               stream_options={"include_usage": True, "continuous_usage_stats": True},
                                               extra_body={"ignore_eos": True})
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 5
    with pytest.raises(openai.BadRequestError):
        client(g).chat.completions.create(model="plain", messages=HI, max_tokens=5, stream=True,
                                          stream_options={"include_usage": True, "continuous_usage_stats": True})


@pytest.mark.parametrize(("model", "param"), [("plain", "ignore_eos"), ("plain", "top_k"), ("listed", "ignore_eos"),
                                              ("narrowed", "top_k"), ("open", "logits_processors"), ("open", "bogus")])
def test_a_parameter_the_model_does_not_declare_is_refused_with_openais_400(g, model, param):
    with pytest.raises(openai.BadRequestError) as err:
        client(g).chat.completions.create(model=model, messages=HI, max_tokens=5, extra_body={param: 1})
    body = err.value.body
    assert body["message"] == f"Unrecognized request argument supplied: {param}" and body["param"] == param


def test_an_explicit_list_passes_exactly_its_parameters(g, sim):
    out = client(g).chat.completions.create(model="listed", messages=HI, max_tokens=5, extra_body={"top_k": 3})
    assert out.choices[0].message.content
    seen = upstream_saw(sim)
    assert seen["top_k"] == 3 and seen["model"] == "sim-small"
    assert set(seen) == {"model", "messages", "max_tokens", "top_k"}, seen  # nothing added on the way
    for param, value in (("min_p", 0.05), ("ignore_eos", True)):  # in the vllm set, not in this model's list
        refused_before_upstream(g, sim, "listed", param, value)



@pytest.mark.parametrize(("model", "param", "value"), [
    ("open", "top_k", 2**70), ("open", "top_k", -2), ("open", "min_tokens", 2**31), ("open", "min_tokens", -1),
    ("open", "best_of", 129), ("open", "truncate_prompt_tokens", 2**64), ("open", "prompt_logprobs", -2),
    ("open", "stop_token_ids", [2**70]), ("open", "allowed_token_ids", [-1]), ("listed", "top_k", 2**40)])
def test_an_integer_extra_past_what_vllm_allows_is_refused_naming_it(g, sim, model, param, value):
    before = sim.stats()["requests_total"]
    with pytest.raises(openai.BadRequestError) as err:
        client(g).chat.completions.create(model=model, messages=HI, max_tokens=5, extra_body={param: value})
    assert err.value.body["param"].startswith(param) and param in err.value.body["message"]
    assert sim.stats()["requests_total"] == before


def test_integer_extras_at_vllms_bounds_pass(g):
    extra = {"top_k": -1, "min_tokens": 0, "best_of": 1, "truncate_prompt_tokens": -1, "stop_token_ids": [0, 2**31 - 1]}
    out = client(g).chat.completions.create(model="open", messages=HI, max_tokens=5, extra_body=extra)
    assert out.choices[0].message.content
