"""The semantic cache on Redis (issue 27, item 2): each replica's vector index follows the stream of vectors
beside the shared entries, so an entry stored through one replica is a semantic hit on the other (found at its
next lookup, no restart), and a replica started after the entry was stored finds it too (it reads the whole
stream at its first lookup); another identity's entry is never a candidate on either."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import openai
import pytest

from store.pg_databases import drop_pg_database, fresh_pg_database
from support import REDIS_URL, Gateway, Sim, require_redis, start_gateway

IDENTITIES = [{"name": "app", "owner": "a@example.com", "models": ["*"]},
              {"name": "b-app", "owner": "b@example.com", "models": ["*"]}]
RULES = [{"name": "sem", "mode": "semantic", "embeddings_model": "sim-embed", "ttl_s": 60}]


def ask(g: Gateway, q: str, system: str, who: str = "app") -> str:
    o = openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0, timeout=20)
    raw = o.chat.completions.with_raw_response.create(
        model="sim-small", messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
        max_tokens=4, temperature=0)
    assert raw.parse().choices[0].message.content
    return raw.headers["x-sluice-cache"]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A sim that embeds with a real small model; replicas made on demand, on one Postgres store and one Redis."""
    require_redis()
    tmp = tmp_path_factory.mktemp("semantic-redis")
    sim = Sim(tmp, embedder="wordllama")
    url = asyncio.run(fresh_pg_database())
    prefix = f"s{uuid.uuid4().hex[:8]}:"
    keys: dict[str, str] = {}
    made: list[Gateway] = []

    def replica() -> Gateway:
        nonlocal keys
        g = start_gateway(tmp_path_factory.mktemp("replica"), upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}],
                          models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}],
                          identities=[{**i, **({"keys": [keys[i["name"]]]} if keys else {})} for i in IDENTITIES],
                          extra={"store": {"url": url}, "usage": {"flush_interval": 0.05},
                                 "cache": {"backend": "redis", "redis_url": REDIS_URL, "key_prefix": prefix,
                                           "rules": RULES}})
        keys = keys or g.keys
        g.keys = keys
        made.append(g)
        return g

    yield {"replica": replica, "sim": sim}
    for g in made:
        g.stop()
    sim.stop()
    asyncio.run(drop_pg_database(url))


@pytest.mark.timeout(300)  # three gateways start in it
def test_an_entry_stored_through_one_replica_is_a_semantic_hit_on_the_other(rig):
    a, b = rig["replica"](), rig["replica"]()
    system = f"Shared by replicas {uuid.uuid4().hex[:6]}."
    assert ask(b, "What is the tallest mountain in the world?", system) == "miss"  # b has read the stream: now follows it
    assert ask(a, "How do I reset my password?", system) == "miss"
    time.sleep(0.2)  # kept after the answer went out
    chats = rig["sim"].stats()["chat_requests"]
    assert ask(b, "How can I reset my password?", system) == "hit"  # stored through a, found by meaning on b
    assert ask(b, "How can I reset my password?", system, "b-app") == "miss"  # another identity's: never a candidate
    assert rig["sim"].stats()["chat_requests"] == chats + 1  # only b-app's went to the model
    late = rig["replica"]()  # started after the entry was stored: reads the whole stream at its first lookup
    assert ask(late, "How can I reset my password?", system) == "hit"
