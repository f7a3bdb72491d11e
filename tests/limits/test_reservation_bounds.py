"""What is forwarded is what was reserved: no request can ask the upstream for more output
than it holds in its limits (issue 9, item 7)."""

from __future__ import annotations

import openai
import pytest

from support import Sim, start_gateway

CAP = 16
RULES = [{"name": "out", "output_tokens_per_minute": 100_000}]


def _gateway(tmp, sim: Sim, over_cap: str):
    return start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                         models=[{"name": "m", "upstream": "sim", "upstream_model": "sim-small"}],
                         identities=[{"name": "a", "owner": "o", "models": ["*"]}],
                         extra={"limits": {"max_tokens_cap": CAP, "over_cap": over_cap, "rules": RULES}})


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bounds")
    s = Sim(tmp)
    (tmp / "refuse").mkdir()
    (tmp / "clamp").mkdir()
    refuse, clamp = _gateway(tmp / "refuse", s, "refuse"), _gateway(tmp / "clamp", s, "clamp")
    yield refuse, clamp, s
    refuse.stop()
    clamp.stop()
    s.stop()


def _client(g) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys["a"], max_retries=0)


MESSAGES = [{"role": "user", "content": "tell me everything"}]


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_an_output_limit_above_the_cap_is_refused_with_a_400_naming_the_cap(rig, field):
    refuse, _, s = rig
    before = s.stats()["chat_requests"]
    with pytest.raises(openai.BadRequestError) as info:
        _client(refuse).chat.completions.create(model="m", messages=MESSAGES, **{field: 1_000_000})
    err = info.value.body
    assert err["code"] == "max_tokens_above_cap" and err["param"] == field
    assert f"limit of {CAP} output tokens" in err["message"]
    assert s.stats()["chat_requests"] == before  # refused before the upstream


def _limits_asked(sim) -> dict:
    """The output limits the sim's last chat request carried (the sim records more than these)."""
    last = sim.stats()["last_chat"]
    return {"max_tokens": last["max_tokens"], "max_completion_tokens": last["max_completion_tokens"]}


def test_a_request_without_an_output_limit_is_sent_the_reserved_one(rig):
    refuse, _, s = rig
    reply = _client(refuse).chat.completions.create(model="m", messages=MESSAGES)
    assert _limits_asked(s) == {"max_tokens": CAP, "max_completion_tokens": None}
    # the sim would say 32 tokens or more unprompted: the reserved limit is what held it
    assert reply.usage.completion_tokens == CAP


def test_the_field_the_caller_used_is_the_one_forwarded(rig):
    refuse, _, s = rig
    _client(refuse).chat.completions.create(model="m", messages=MESSAGES, max_completion_tokens=5)
    assert _limits_asked(s) == {"max_tokens": None, "max_completion_tokens": 5}


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_with_over_cap_clamp_an_output_limit_above_the_cap_is_lowered_to_it(rig, field):
    _, clamp, s = rig
    reply = _client(clamp).chat.completions.create(model="m", messages=MESSAGES, **{field: 1_000_000})
    assert s.stats()["last_chat"][field] == CAP
    assert reply.usage.completion_tokens == CAP
