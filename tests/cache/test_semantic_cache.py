"""The semantic response cache (issue 27, item 2) through the `openai` SDK against a real gateway in front of the sim,
whose embeddings are a small real model (``--embedder wordllama``): a paraphrase hits and a near-miss does not; a
different system prompt, earlier turn, model or temperature never hits; requests with tools never go semantic;
another identity never hits; the embedding is the caller's own call (its usage row, its limits, its scopes); a
dead or silent embeddings upstream leaves a plain miss, served (a silent one within the rule's bound). Two replicas on Redis: tests/cache/test_semantic_redis.py;
the labelled set: tests/cache/test_semantic_labelled.py."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import openai
import pytest

from sluice.core.cache_config import CacheRule

from cache.semantic_pairs import NEAR_MISSES, PARAPHRASES
from support import Gateway, Sim, free_port, start_gateway, usage_rows
from tcp_proxy import TcpProxy

IDENTITIES = [
    {"name": "app", "owner": "a@example.com", "models": ["*"]},
    {"name": "other", "owner": "o@example.com", "models": ["*"]},
    {"name": "narrow", "owner": "n@example.com", "models": ["sim-small"]},  # may not call the embeddings model
]
CHAT = ["sim-small", "sim-other", "sim-turns", "sim-lim", "sim-dead", "sim-silent"]
SEMANTIC = {"mode": "semantic", "ttl_s": 60, "embeddings_model": "sim-embed"}
RULES = [
    {**SEMANTIC, "name": "dead", "match": {"models": ["sim-dead"]}, "embeddings_model": "dead-embed"},
    {**SEMANTIC, "name": "silent", "match": {"models": ["sim-silent"]}, "embeddings_model": "silent-embed",
     "embeddings_timeout_s": 0.5},
    {**SEMANTIC, "name": "limited", "match": {"models": ["sim-lim"]}, "embeddings_model": "embed-one"},
    {**SEMANTIC, "name": "turns", "match": {"models": ["sim-turns"]}, "max_user_turns": 2},
    {**SEMANTIC, "name": "sem", "match": {"models": ["sim-small", "sim-other"]}, "sampled": True},
]
DEFAULT_THRESHOLD = CacheRule(name="default").threshold
PARAPHRASE = ("How do I reset my password?", "How can I reset my password?")
NEAR_MISS = "How do I reset my username?"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("semantic")
    sim = Sim(tmp, embedder="wordllama")
    silent = TcpProxy(("127.0.0.1", sim.port))  # accepts and never answers: an embeddings upstream that hangs
    silent.start()
    silent.blackhole()
    g = start_gateway(
        tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 5},
                        {"name": "dead", "base_url": f"http://127.0.0.1:{free_port()}/v1", "connect_timeout": 1},
                        {"name": "silent", "base_url": f"http://127.0.0.1:{silent.port}/v1", "read_timeout": 30}],
        models=[*({"name": m, "upstream": "sim", "upstream_model": "sim-small"} for m in CHAT),
                {"name": "sim-embed", "upstream": "sim"},
                {"name": "embed-one", "upstream": "sim", "upstream_model": "sim-embed"},
                {"name": "dead-embed", "upstream": "dead", "upstream_model": "sim-embed"},
                {"name": "silent-embed", "upstream": "silent", "upstream_model": "sim-embed"}],
        identities=IDENTITIES,
        extra={"cache": {"rules": RULES}, "usage": {"flush_interval": 0.05},
               "limits": {"rules": [{"name": "one-embedding", "match": {"model": "embed-one"}, "requests_per_minute": 1}]}})
    yield g, sim
    g.stop()
    sim.stop()
    silent.close()


_CLIENTS: dict[tuple[str, str], openai.OpenAI] = {}


def client(g: Gateway, who: str) -> openai.OpenAI:
    o = _CLIENTS.get((g.v1, who))
    if o is None:
        o = _CLIENTS[(g.v1, who)] = openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0, timeout=20)
    return o


def ask(g: Gateway, question: str, *, system: str, who: str = "app", model: str = "sim-small",
        before: list[dict] | None = None, **extra: object) -> tuple[str, str, str]:
    """(the x-sluice-cache header, the answer's text, the request id)."""
    o = client(g, who)
    msgs = [{"role": "system", "content": system}, *(before or []), {"role": "user", "content": question}]
    raw = o.chat.completions.with_raw_response.create(model=model, messages=msgs,
                                                      **({"temperature": 0, "max_tokens": 8} | extra))  # type: ignore[arg-type]
    return raw.headers["x-sluice-cache"], raw.parse().choices[0].message.content or "", raw.headers["x-request-id"]


def stored(g: Gateway, question: str, **kw: object) -> str:
    """Ask ``question`` (a miss) and wait until its entry is written (it is kept after the answer goes out)."""
    header, text, _ = ask(g, question, **kw)  # type: ignore[arg-type]
    assert header == "miss", header
    time.sleep(0.15)
    return text


def fresh() -> str:
    return f"You answer briefly. Conversation {uuid.uuid4().hex[:8]}."


def test_a_paraphrase_hits_and_a_near_miss_does_not(rig):
    g, sim = rig
    system = fresh()
    first = stored(g, PARAPHRASE[0], system=system)
    chats = sim.stats()["chat_requests"]
    header, text, _ = ask(g, PARAPHRASE[1], system=system)
    assert header == "hit" and text == first  # the answer to the first wording, served to the second
    assert sim.stats()["chat_requests"] == chats  # no model call
    header, text, _ = ask(g, NEAR_MISS, system=system)
    assert header == "miss" and sim.stats()["chat_requests"] == chats + 1
    stream = client(g, "app").chat.completions.with_raw_response.create(
        model="sim-small", messages=[{"role": "system", "content": system}, {"role": "user", "content": PARAPHRASE[1]}],
        max_tokens=8, temperature=0, stream=True)
    assert stream.headers["x-sluice-cache"] == "hit"  # in the caller's mode: a stream the SDK parses
    assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices) == first


def test_a_purged_entry_is_no_candidate(rig):
    g, _ = rig
    system = fresh()
    stored(g, PARAPHRASE[0], system=system, who="other")
    who = next(i["id"] for i in g.admin("GET", "/admin/identities").json()["data"] if i["name"] == "other")
    r = g.admin("POST", "/admin/cache/purge", json={"identity": who})
    assert r.status_code == 200 and r.json()["purged"] >= 1, r.text
    assert ask(g, PARAPHRASE[1], system=system, who="other")[0] == "miss"  # its vector is forgotten with it


def test_a_different_system_prompt_earlier_turn_model_or_parameter_never_hits(rig):
    g, _ = rig
    system = fresh()
    stored(g, PARAPHRASE[0], system=system)
    assert ask(g, PARAPHRASE[1], system=system + " Be formal.")[0] == "miss"  # another system prompt
    assert ask(g, PARAPHRASE[1], system=system, model="sim-other")[0] == "miss"  # another model, same upstream
    assert ask(g, PARAPHRASE[1], system=system, temperature=0.5)[0] == "miss"  # another temperature
    assert ask(g, PARAPHRASE[1], system=system, max_tokens=9)[0] == "miss"  # another parameter
    assert ask(g, PARAPHRASE[1], system=system)[0] == "hit"  # the same again: it was there all along
    earlier = [{"role": "user", "content": "I use the web app."}, {"role": "assistant", "content": "Noted."}]
    stored(g, PARAPHRASE[0], system=system, model="sim-turns", before=earlier)
    assert ask(g, PARAPHRASE[1], system=system, model="sim-turns", before=earlier)[0] == "hit"  # two turns allowed
    other = [{"role": "user", "content": "I use the mobile app."}, {"role": "assistant", "content": "Noted."}]
    assert ask(g, PARAPHRASE[1], system=system, model="sim-turns", before=other)[0] == "miss"  # another earlier turn
    reply = [earlier[0], {"role": "assistant", "content": "Understood."}]
    assert ask(g, PARAPHRASE[1], system=system, model="sim-turns", before=reply)[0] == "miss"  # another earlier reply


def test_a_conversation_longer_than_the_rule_allows_is_looked_up_exactly_only(rig):
    g, sim = rig
    system = fresh()
    earlier = [{"role": "user", "content": "I use the web app."}, {"role": "assistant", "content": "Noted."}]
    stored(g, PARAPHRASE[0], system=system, before=earlier)  # two user turns under a rule of one
    embeds = sim.stats()["embedding_requests"]
    assert ask(g, PARAPHRASE[1], system=system, before=earlier)[0] == "miss"
    assert ask(g, PARAPHRASE[0], system=system, before=earlier)[0] == "hit"  # exactly the same: the exact cache
    assert sim.stats()["embedding_requests"] == embeds  # nothing was embedded


TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]


def test_requests_with_tools_never_go_semantic(rig):
    g, sim = rig
    system = fresh()
    stored(g, PARAPHRASE[0], system=system, tools=TOOLS)
    stored(g, PARAPHRASE[0], system=system + " ")
    embeds = sim.stats()["embedding_requests"]
    assert ask(g, PARAPHRASE[1], system=system, tools=TOOLS)[0] == "miss"  # an entry made with the same tools
    assert ask(g, PARAPHRASE[1], system=system + " ", tools=TOOLS)[0] == "miss"  # and one made without
    assert sim.stats()["embedding_requests"] == embeds  # never embedded
    assert ask(g, PARAPHRASE[0], system=system, tools=TOOLS)[0] == "hit"  # the exact cache still serves them


def test_another_identity_never_hits(rig):
    g, _ = rig
    one, two = fresh(), fresh()
    stored(g, PARAPHRASE[0], system=one)
    stored(g, PARAPHRASE[0], system=two)
    assert ask(g, PARAPHRASE[1], system=one, who="other")[0] == "miss"  # not by meaning
    assert ask(g, PARAPHRASE[0], system=two, who="other")[0] == "miss"  # nor exactly
    assert ask(g, PARAPHRASE[1], system=one)[0] == "hit"  # the entry was there for its owner


def test_the_embedding_is_the_callers_own_call_its_usage_limits_and_scopes(rig):
    g, _ = rig
    system = fresh()
    since = time.time() - 1
    _, _, first = ask(g, PARAPHRASE[0], system=system)
    time.sleep(0.15)
    header, _, second = ask(g, PARAPHRASE[1], system=system)
    assert header == "hit"
    rows = {r["request_id"]: r for r in usage_rows(g, since, 4) if r["request_id"].startswith((first, second))}
    app = rows[first]["identity_id"]
    for rid in (first, second):
        emb = rows[rid + ".e"]  # the embedding: a usage row of its own, the caller's
        assert emb["endpoint"] == "embeddings" and emb["model"] == "sim-embed" and emb["status"] == 200
        assert emb["identity_id"] == app and emb["prompt_tokens"] > 0
    assert rows[second]["usage_source"] == "semantic" and rows[second]["completion_tokens"] == 0
    # its limits: one embedding a minute for embed-one; the second lookup's embedding is refused, a plain miss
    system = fresh()
    since = time.time() - 1
    stored(g, PARAPHRASE[0], system=system, model="sim-lim")
    header, _, rid = ask(g, PARAPHRASE[1], system=system, model="sim-lim")
    assert header == "miss"
    rows = {r["request_id"]: r for r in usage_rows(g, since, 4)}
    assert rows[rid + ".e"]["status"] == 429 and rows[rid]["status"] == 200
    # its scopes: an identity that may not call the embeddings model is looked up exactly only
    system = fresh()
    since = time.time() - 1
    stored(g, PARAPHRASE[0], system=system, who="narrow")
    header, _, rid = ask(g, PARAPHRASE[1], system=system, who="narrow")
    assert header == "miss"
    assert {r["request_id"]: r for r in usage_rows(g, since, 4)}[rid + ".e"]["status"] == 404


def test_a_dead_embeddings_upstream_leaves_a_plain_miss_that_is_served(rig):
    g, _ = rig
    system = fresh()
    for q in (*PARAPHRASE, PARAPHRASE[1]):
        header, text, _ = ask(g, q, system=system, model="sim-dead")
        assert text
        time.sleep(0.15)
    assert header == "hit"  # the exact cache goes on without the semantic one


def test_an_embeddings_upstream_that_never_answers_holds_no_request_past_the_rules_bound(rig):
    g, _ = rig
    system = fresh()
    since = time.time() - 1
    for q in PARAPHRASE:
        t0 = time.monotonic()
        header, text, rid = ask(g, q, system=system, model="sim-silent")
        took = time.monotonic() - t0
        assert header == "miss" and text and took < 5.0, (header, took)  # its upstream waits 30 s; the bound is 0.5 s
        time.sleep(0.15)
    row = {r["request_id"]: r for r in usage_rows(g, since, 4)}[rid + ".e"]
    assert row["status"] == 499 and row["error_code"] == "client_closed"  # the embedding, cut by the bound


@pytest.mark.timeout(400)
def test_on_a_labelled_set_of_paraphrases_and_near_misses_precision_holds_at_the_default_threshold(rig, capsys):
    """Each pair in a conversation of its own (a system prompt of its own: its own bucket): the first question is
    asked and kept, then the second; a hit is the cache saying they mean the same. The rule's threshold is the
    default. Recall here is that of the sim's small static model (WordLlama), not of a production one; the pairs'
    cosines, asked of the same model through the gateway, show what other thresholds would do."""
    g, _ = rig
    run = uuid.uuid4().hex[:8]
    pairs = [(a, b, True) for a, b in PARAPHRASES] + [(a, b, False) for a, b in NEAR_MISSES]
    assert len(pairs) >= 200
    for i, (a, _, _) in enumerate(pairs):
        assert ask(g, a, system=f"Labelled pair {i} of run {run}.")[0] == "miss"
    time.sleep(0.3)  # every entry written
    hits = [ask(g, b, system=f"Labelled pair {i} of run {run}.")[0] == "hit" for i, (_, b, _) in enumerate(pairs)]
    tp = sum(h and same for h, (_, _, same) in zip(hits, pairs))
    fp = [(a, b) for h, (a, b, same) in zip(hits, pairs) if h and not same]
    precision, recall = tp / max(tp + len(fp), 1), tp / len(PARAPHRASES)
    vecs = [d.embedding for d in client(g, "app").embeddings.create(
        model="sim-embed", input=[t for a, b, _ in pairs for t in (a, b)]).data]
    cos = [sum(x * y for x, y in zip(vecs[2 * i], vecs[2 * i + 1])) for i in range(len(pairs))]
    table = []
    for t in (0.93, 0.94, 0.95, 0.96, 0.97, 0.98):
        p_tp = sum(c >= t and same for c, (_, _, same) in zip(cos, pairs))
        p_fp = sum(c >= t and not same for c, (_, _, same) in zip(cos, pairs))
        table.append(f"{t:.2f}: precision {p_tp / max(p_tp + p_fp, 1):.3f} recall {p_tp / len(PARAPHRASES):.3f}")
    with capsys.disabled():
        print(f"\nsemantic cache, labelled set of {len(PARAPHRASES)} paraphrases and {len(NEAR_MISSES)} near-misses at "
              f"the default threshold {DEFAULT_THRESHOLD} (sim --embedder wordllama): precision {precision:.3f} "
              f"({tp} of {tp + len(fp)}), recall {recall:.3f}; near-misses served: {fp}\n"
              f"the same pairs' cosines at other thresholds: " + "; ".join(table))
    assert precision >= 0.99, fp


def test_a_semantic_rule_naming_a_model_the_policy_does_not_serve_is_refused_naming_it(rig):
    g, _ = rig
    version = g.admin("GET", "/admin/policy").json()["version"]
    bad = [*RULES, {**SEMANTIC, "name": "typo", "match": {"models": ["sim-other"]}, "embeddings_model": "sim-embedd"}]
    r = g.admin("POST", "/admin/policy/changes", json={"sections": {"cache": {"rules": bad}}, "reason": "typo"})
    assert r.status_code == 400 and "sim-embedd" in r.json()["error"]["message"], r.text
    assert g.admin("GET", "/admin/policy").json()["version"] == version  # nothing changed
