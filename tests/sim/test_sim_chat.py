"""Non-streaming chat completions: vLLM's wire shape, deterministic text, usage and errors."""

from __future__ import annotations

import openai
import pytest
from sim_harness import RunningSim, StartSim, user


async def test_same_prompt_gives_the_same_text_twice(running: RunningSim) -> None:
    client = running.client()
    first = await client.chat.completions.create(model="sim-small", messages=user("Tell me a story."), max_tokens=12)
    second = await client.chat.completions.create(model="sim-small", messages=user("Tell me a story."), max_tokens=12)
    assert first.choices[0].message.content == second.choices[0].message.content
    assert first.id != second.id and first.id.startswith("chatcmpl-")


async def test_different_prompts_or_seeds_give_different_text(start_sim: StartSim) -> None:
    a, b = await start_sim(seed=1), await start_sim(seed=2)
    ask = dict(model="sim-small", max_tokens=12)
    story_a = (await a.client().chat.completions.create(messages=user("Tell me a story."), **ask)).choices[0].message.content
    poem_a = (await a.client().chat.completions.create(messages=user("Write a poem."), **ask)).choices[0].message.content
    story_b = (await b.client().chat.completions.create(messages=user("Tell me a story."), **ask)).choices[0].message.content
    assert story_a != poem_a
    assert story_a != story_b


async def test_max_tokens_bounds_the_output_and_finishes_with_length(running: RunningSim) -> None:
    reply = await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=7)
    choice = reply.choices[0]
    words = choice.message.content.split(" ")
    assert choice.message.content.startswith(" ") and len(words) - 1 == 7
    assert choice.finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 7
    assert choice.message.role == "assistant"


async def test_max_completion_tokens_is_honoured_like_max_tokens(running: RunningSim) -> None:
    reply = await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_completion_tokens=3)
    assert reply.usage is not None and reply.usage.completion_tokens == 3


async def test_without_max_tokens_the_default_bounds_the_output(start_sim: StartSim) -> None:
    sim = await start_sim(default_max_tokens=5)
    reply = await sim.client().chat.completions.create(model="sim-small", messages=user("Hi"))
    assert reply.usage is not None and reply.usage.completion_tokens == 5


async def test_a_generous_max_tokens_ends_naturally_with_stop(running: RunningSim) -> None:
    reply = await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=5000)
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and 0 < reply.usage.completion_tokens < 5000


async def test_usage_counts_role_and_content_tokens_including_text_parts(running: RunningSim) -> None:
    client = running.client()
    plain = await client.chat.completions.create(
        model="sim-small", messages=[{"role": "system", "content": "Be brief."}, *user("Hello, world!")], max_tokens=2
    )
    # system + Be + brief + . , user + Hello + , + world + !
    assert plain.usage is not None and plain.usage.prompt_tokens == 9
    assert plain.usage.total_tokens == 11
    parts = await client.chat.completions.create(
        model="sim-small",
        messages=user([{"type": "text", "text": "Hello,"}, {"type": "text", "text": "world!"}]),
        max_tokens=2,
    )
    assert parts.usage is not None and parts.usage.prompt_tokens == 5


async def test_the_sim_counts_prompt_and_completion_tokens_with_the_tokenizer_it_ships(running: RunningSim) -> None:
    """Read with Hugging Face ``tokenizers`` itself: the file any gateway can name as a model's tokenizer."""
    from pathlib import Path

    import tokenizers

    import sluice.sim

    shipped = Path(sluice.sim.__file__).with_name("tokenizer.json")
    assert shipped.stat().st_size < 300_000
    tok = tokenizers.Tokenizer.from_file(str(shipped))

    def n(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False))

    # "cafe\u0301" (a combining accent) is one token of the file, where a `\w+|[^\w\s]` regex sees two
    messages = [{"role": "system", "content": "Be brief; no jargon (please)."},
                {"role": "user", "content": [{"type": "text", "text": "Zyx-9 or qwop?"}, {"type": "text", "text": "Say: cafe\u0301!"}]}]
    reply = await running.client().chat.completions.create(model="sim-small", messages=messages, max_tokens=9)
    # the template: each message is its role, then its content
    expected = n("system") + n("Be brief; no jargon (please).") + n("user") + n("Zyx-9 or qwop?") + n("Say: cafe\u0301!")
    assert reply.usage is not None and reply.usage.prompt_tokens == expected
    assert reply.usage.completion_tokens == n(reply.choices[0].message.content) == 9
    embedded = await running.client().embeddings.create(model="sim-embed", input=["a, b; c!", "Zyx-9 or qwop?"])
    assert embedded.usage.prompt_tokens == n("a, b; c!") + n("Zyx-9 or qwop?")


async def test_every_word_the_sim_generates_is_one_token_of_its_tokenizer() -> None:
    """So a completion's tokens are its words, and max_tokens bounds both."""
    from sluice.sim.text import _WORDS
    from sluice.sim.tokens import count

    assert all(count(w) == 1 for w in _WORDS) and count("".join(_WORDS)) == len(_WORDS)


async def test_reply_has_the_vllm_fields(running: RunningSim) -> None:
    raw = await running.http.post(
        "/v1/chat/completions", json={"model": "sim-small", "messages": user("Hi"), "max_tokens": 2}
    )
    body = raw.json()
    assert raw.headers["content-type"].startswith("application/json")
    assert body["object"] == "chat.completion" and isinstance(body["created"], int) and body["model"] == "sim-small"
    assert body["choices"][0]["logprobs"] is None and body["choices"][0]["index"] == 0
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_n_returns_that_many_different_choices(running: RunningSim) -> None:
    reply = await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=6, n=3)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) == 3
    assert reply.usage is not None and reply.usage.completion_tokens == 18


async def test_unknown_model_is_a_vllm_shaped_404(running: RunningSim) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await running.client().chat.completions.create(model="no-such-model", messages=user("Hi"))
    assert err.value.status_code == 404
    raw = await running.http.post("/v1/chat/completions", json={"model": "no-such-model", "messages": user("Hi")})
    body = raw.json()
    assert body["object"] == "error" and body["code"] == 404 and body["type"] == "NotFoundError"
    assert body["param"] is None and "no-such-model" in body["message"]


@pytest.mark.parametrize(
    "payload",
    [b"{not json", b'{"model": "sim-small"}', b'{"model": "sim-small", "messages": []}', b'{"model": "sim-small", "messages": "hi"}'],
    ids=["malformed", "missing-messages", "empty-messages", "messages-not-a-list"],
)
async def test_invalid_requests_are_a_vllm_shaped_400(running: RunningSim, payload: bytes) -> None:
    raw = await running.http.post(
        "/v1/chat/completions", content=payload, headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400
    body = raw.json()
    assert body["object"] == "error" and body["code"] == 400 and body["message"]
    assert (await running.stats())["errors_returned"] == 1


async def test_models_lists_the_configured_models_in_vllm_shape(start_sim: StartSim) -> None:
    sim = await start_sim(models=["alpha", "beta"])
    models = [m async for m in sim.client().models.list()]
    assert [m.id for m in models] == ["alpha", "beta"]
    assert all(m.owned_by == "sluice-sim" and m.object == "model" for m in models)
    raw = (await sim.http.get("/v1/models")).json()
    assert raw["object"] == "list" and raw["data"][0]["max_model_len"] > 0


async def test_health_answers_200_and_stats_count_requests_until_reset(running: RunningSim) -> None:
    assert (await running.http.get("/health")).status_code == 200
    await running.client().chat.completions.create(model="sim-small", messages=user("Hi"), max_tokens=1)
    stats = await running.stats()
    assert stats["requests_total"] == 1 and stats["chat_requests"] == 1 and stats["in_flight"] == 0
    assert (await running.http.post("/sim/stats/reset")).status_code == 200
    assert (await running.stats())["requests_total"] == 0


async def test_stats_hold_the_last_chat_request_body_as_it_arrived(running: RunningSim) -> None:
    body = {"model": "sim-small", "messages": user("Hi"), "max_tokens": 2, "top_k": 20, "guided_json": {"type": "object"}}
    assert (await running.http.post("/v1/chat/completions", json=body)).status_code == 200
    assert (await running.stats())["last_chat"]["body"] == body
