"""The exact response cache (issue 27, item 1) through the SDKs against a real gateway in front of the sim:
repeated questions hit (the sim answers once), another identity never does, a teammate only under
``scope: team``; a cached answer is served in the caller's mode (a whole one to a stream the SDK parses,
and the reverse; Messages and Responses too) with a fresh id; a new model version behind the same name
misses; what must not be cached is not; a hit's usage record has no upstream tokens and the rule's charge."""

from __future__ import annotations

import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from support import Gateway, Sim, start_gateway, usage_rows

TEAMS = [{"name": "blue", "owner": "blue@example.com"}]
IDENTITIES = [
    {"name": "app", "owner": "a@example.com", "environment": "dev", "team": "blue", "models": ["*"]},
    {"name": "mate", "owner": "m@example.com", "environment": "dev", "team": "blue", "models": ["*"]},
    {"name": "other", "owner": "o@example.com", "environment": "dev", "models": ["*"]},
]
VERSIONS = [{"version": "v1", "upstream": "sim", "upstream_model": "sim-small", "approved": True},
            {"version": "v2", "upstream": "sim", "upstream_model": "sim-small", "approved": True}]
ROUTES = [{"name": "chat", "match": {"models": ["chat"]}, "targets": [{"target": "chat@v1", "weight": 100}]}]
RULES = [
    {"name": "shared", "match": {"models": ["sim-team"]}, "scope": "team", "ttl_s": 60},
    {"name": "priced", "match": {"models": ["sim-priced"]}, "ttl_s": 60, "charge": 0.25},
    {"name": "mine", "ttl_s": 60},
]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("cache")
    sim = Sim(tmp)
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5}],
                      models=[{"name": "sim-small", "upstream": "sim"},
                              {"name": "sim-team", "upstream": "sim", "upstream_model": "sim-small"},
                              {"name": "sim-priced", "upstream": "sim", "upstream_model": "sim-small"}],
                      identities=IDENTITIES,
                      extra={"teams": TEAMS, "cache": {"rules": RULES}, "registry": [{"name": "chat", "versions": VERSIONS}],
                             "routes": ROUTES, "usage": {"flush_interval": 0.05}})
    yield g, sim
    g.stop()
    sim.stop()


def client(g: Gateway, who: str = "app") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0, timeout=20)


def ask(g: Gateway, question: str, who: str = "app", model: str = "sim-small", **extra: object):
    """(the completion, its x-sluice-cache header)."""
    raw = client(g, who).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0, **extra)
    return raw.parse(), raw.headers.get("x-sluice-cache")


def chats(sim: Sim) -> int:
    return sim.stats()["chat_requests"]


def test_repeated_questions_through_the_sdk_hit_and_the_model_answers_once(rig):
    g, sim = rig
    before, since = chats(sim), time.time() - 1
    first, h1 = ask(g, "What is the capital of Norway?")
    again = [ask(g, "What is the capital of Norway?") for _ in range(3)]
    assert h1 == "miss" and [h for _, h in again] == ["hit"] * 3
    assert chats(sim) - before == 1  # one upstream call for four questions
    for c, _ in again:
        assert c.choices[0].message.content == first.choices[0].message.content
        assert c.id != first.id and c.id.startswith("chatcmpl-")  # a fresh id for every answer
    assert len({c.id for c, _ in again}) == 3
    rows = sorted(usage_rows(g, since, 4), key=lambda r: r["ts"])
    assert [r["usage_source"] for r in rows] == ["upstream", "cache", "cache", "cache"]
    assert all(r["prompt_tokens"] == 0 and r["completion_tokens"] == 0 and r["cost_nanos"] == 0 for r in rows[1:])


def test_another_identity_never_hits_and_a_teammate_only_under_team_scope(rig):
    g, _ = rig
    q = "Which identities share this answer?"
    assert ask(g, q)[1] == "miss"
    assert ask(g, q, "other")[1] == "miss"
    assert ask(g, q, "other")[1] == "hit"  # its own entry, not app's
    assert ask(g, q, "mate")[1] == "miss"  # scope identity (the default): a teammate has its own entries
    assert ask(g, q, model="sim-team")[1] == "miss"
    assert ask(g, q, "mate", model="sim-team")[1] == "hit"  # scope team: the teammate's question hits app's answer
    assert ask(g, q, "other", model="sim-team")[1] == "miss"  # not of the team


def test_a_cached_whole_answer_serves_a_stream_the_sdk_parses_and_the_reverse(rig):
    g, sim = rig
    whole, h = ask(g, "Stream me a cached answer.")
    assert h == "miss"
    before = chats(sim)
    with client(g).chat.completions.with_streaming_response.create(
            model="sim-small", messages=[{"role": "user", "content": "Stream me a cached answer."}], max_tokens=8,
            temperature=0, stream=True, stream_options={"include_usage": True}) as raw:
        assert raw.headers["x-sluice-cache"] == "hit"
        chunks = list(raw.parse())
    assert chats(sim) == before
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert {c.id for c in chunks} != {whole.id} and len({c.id for c in chunks}) == 1
    # the reverse: a streamed miss, then the whole question hits
    q = "A streamed answer, then a whole one."
    stream = client(g).chat.completions.create(model="sim-small", messages=[{"role": "user", "content": q}],
                                               max_tokens=8, temperature=0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    time.sleep(0.1)  # the entry is written after the stream's end went out
    got, h = ask(g, q)
    assert h == "hit" and got.choices[0].message.content == text


def test_messages_and_responses_are_served_from_the_cache_in_their_own_shape(rig):
    g, sim = rig
    a = anthropic.Anthropic(base_url=g.url, api_key=g.keys["app"], max_retries=0)
    ask_ = {"model": "sim-small", "max_tokens": 8, "extra_body": {"temperature": 0},
            "messages": [{"role": "user", "content": "Hi, Claude."}]}
    first = a.messages.with_raw_response.create(**ask_)
    assert first.headers["x-sluice-cache"] == "miss"
    before = chats(sim)
    with a.messages.stream(**ask_) as s:
        text = s.get_final_text()
        msg = s.get_final_message()
    assert chats(sim) == before and text == first.parse().content[0].text and msg.id != first.parse().id
    o = client(g)
    r1 = o.responses.with_raw_response.create(model="sim-small", input="Hi, Responses.", temperature=0, store=False,
                                              max_output_tokens=16)
    assert r1.headers["x-sluice-cache"] == "miss"
    events = list(o.responses.create(model="sim-small", input="Hi, Responses.", temperature=0, store=False,
                                     max_output_tokens=16, stream=True))
    assert chats(sim) == before + 1
    assert events[-1].type in ("response.completed", "response.incomplete")  # its end: max_output_tokens or not
    done = events[-1].response
    assert done.output_text == r1.parse().output_text and done.id != r1.parse().id


def test_a_new_model_version_behind_the_same_name_misses(rig):
    g, _ = rig
    q = "Which version answers?"
    assert ask(g, q, model="chat")[1] == "miss"
    assert ask(g, q, model="chat")[1] == "hit"
    r = g.admin("PUT", "/admin/routing/routes/chat/weights", json={"targets": [{"target": "chat@v2", "weight": 100}]})
    assert r.status_code == 200, r.text
    raw = client(g).chat.completions.with_raw_response.create(
        model="chat", messages=[{"role": "user", "content": q}], max_tokens=8, temperature=0)
    assert raw.headers["x-sluice-cache"] == "miss" and "target=chat@v2" in raw.headers["x-sluice-route"]
    assert ask(g, q, model="chat")[1] == "hit"


def test_what_must_not_be_cached_is_not(rig):
    g, sim = rig
    o = client(g)
    for _ in range(2):  # no temperature given: the API's default, 1, samples
        raw = o.chat.completions.with_raw_response.create(model="sim-small", max_tokens=8,
                                                          messages=[{"role": "user", "content": "Sampled, not cached."}])
        assert raw.headers["x-sluice-cache"] == "bypass"
    for _ in range(2):
        assert ask(g, "Off for me.", extra_headers={"x-sluice-cache": "off"})[1] == "bypass"
    for _ in range(2):
        assert ask(g, "Two choices.", n=2)[1] == "bypass"
    call = 'sim:call get_weather {"city": "Oslo"}'
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    got, h = ask(g, call, tools=tools)
    assert got.choices[0].message.tool_calls and h == "miss"
    assert ask(g, call, tools=tools)[1] == "miss"  # a reply calling tools is not kept unless the rule says so
    before = chats(sim)
    sim.faults(error_rate=1.0, error_status=500)
    try:
        with pytest.raises(openai.InternalServerError):
            ask(g, "An error is never cached.")
    finally:
        sim.clear_faults()
    assert ask(g, "An error is never cached.")[1] == "miss"
    assert chats(sim) > before


def test_a_hit_is_charged_what_its_rule_says(rig):
    g, _ = rig
    since = time.time() - 1
    assert ask(g, "What does a hit cost?", model="sim-priced")[1] == "miss"
    assert ask(g, "What does a hit cost?", model="sim-priced")[1] == "hit"
    rows = [r for r in usage_rows(g, since, 2) if r["model"] == "sim-priced"]
    hit = [r for r in rows if r["usage_source"] == "cache"]
    assert len(hit) == 1 and hit[0]["cost_nanos"] == 250_000_000 and hit[0]["prompt_tokens"] == 0


def test_an_operator_purges_an_identitys_entries_and_disabling_it_purges_them_too(rig):
    g, _ = rig
    q = "Purge me."
    assert ask(g, q)[1] == "miss" and ask(g, q)[1] == "hit"
    app_id = next(i["id"] for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == "app")
    r = g.admin("POST", "/admin/cache/purge", json={"identity": app_id})
    assert r.status_code == 200 and r.json()["purged"] >= 1
    assert ask(g, q)[1] == "miss"
    assert g.admin("POST", "/admin/cache/purge", json={"identity": app_id, "team": "blue"}).status_code == 400
    assert g.admin("POST", "/admin/cache/purge", json={"model": "sim-small"}).json()["purged"] >= 1
    assert ask(g, q)[1] == "miss"
    other = next(i["id"] for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == "other")
    assert ask(g, q, "other")[1] in ("miss", "hit")
    assert ask(g, q, "other")[1] == "hit"
    assert g.admin("DELETE", f"/admin/identities/{other}").status_code == 200
    time.sleep(0.2)
    assert g.admin("POST", "/admin/cache/purge", json={"identity": other}).json()["purged"] == 0  # gone already
    with httpx.Client() as h:
        assert h.post(g.v1 + "/chat/completions", headers={"Authorization": f"Bearer {g.keys['other']}"},
                      json={"model": "sim-small", "messages": [{"role": "user", "content": q}]}).status_code == 401


def operator(g: Gateway, name: str) -> str:
    """A second operator's control-plane key."""
    ident = g.admin("POST", "/admin/identities", json={"name": f"{name}-{time.time_ns() % 10**9}", "owner": "ops@example.com",
                                                       "roles": ["operator"]})
    assert ident.status_code == 201, ident.text
    key = g.admin("POST", f"/admin/identities/{ident.json()['id']}/keys", json={"plane": "control"})
    assert key.status_code == 201, key.text
    return key.json()["key"]


def test_the_cache_section_is_versioned_a_change_starts_a_new_key_space_and_global_scope_needs_a_second_operator(rig):
    g, _ = rig
    q = "Which policy version cached me?"
    assert ask(g, q)[1] == "miss" and ask(g, q)[1] == "hit"
    shorter = [{**RULES[0]}, {**RULES[1]}, {**RULES[2], "ttl_s": 30}]
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"cache": {"rules": shorter}}, "reason": "shorter ttl"})
    assert r.status_code == 201, r.text  # a dev change: applied at once, a new version
    assert ask(g, q)[1] == "miss"  # the section changed: a new key space
    assert ask(g, q)[1] == "hit"
    everyone = [{"name": "everyone", "match": {"models": ["sim-priced"]}, "scope": "global", "ttl_s": 60}, *shorter]
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"cache": {"rules": everyone}}, "reason": "share"})
    assert r.status_code == 202, r.text  # waits: an answer shared by every identity
    cs = r.json()
    assert cs["needs_approval"] and cs["status"] == "pending" and cs["sections"] == ["cache"]
    own = g.admin("POST", f"/admin/policy/changes/{cs['id']}/approve", json={"reason": "mine"})
    assert own.status_code == 403 and own.json()["error"]["code"] == "self_approval"
    assert ask(g, "Shared by all?", model="sim-priced")[1] == "miss"
    assert ask(g, "Shared by all?", "mate", model="sim-priced")[1] == "miss"  # pending: still identity scope
    second = operator(g, "second")
    done = httpx.post(g.admin_url + f"/admin/policy/changes/{cs['id']}/approve", json={"reason": "reviewed"},
                      headers={"Authorization": f"Bearer {second}"}, timeout=10)
    assert done.status_code == 200, done.text
    assert ask(g, "Shared by all, now?", model="sim-priced")[1] == "miss"
    assert ask(g, "Shared by all, now?", "mate", model="sim-priced")[1] == "hit"  # global: another identity hits
