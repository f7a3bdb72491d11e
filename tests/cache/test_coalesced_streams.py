"""Request coalescing of streams (issue 27, item 3): a streamed answer fans out to every identical request
event by event, through the ``openai`` SDK and httpx, against a real gateway in front of a sim that paces its
tokens. A waiter's first event comes as soon as the leader's, not at the end; a waiter that leaves cuts
nobody, and the leader's caller leaving does not stop the upstream for the others; each caller has its own
id and usage record; a leader whose stream is cut gives its followers an error their SDK raises."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from support import Gateway, Sim, start_gateway, usage_rows

# answers of sim-alias outgrow a fan-out buffer of 8 x 200 bytes after about ten events
TINY = {"name": "tiny", "match": {"models": ["sim-alias"]}, "ttl_s": 60, "max_entry_bytes": 200}
TOKENS = 20  # the sim writes one token every DECODE_MS: a stream of ~2 s
DECODE_MS = 100


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("coalesce-streams")
    sim = Sim(tmp, **{"decode-ms": DECODE_MS})
    g = start_gateway(tmp, upstreams=[{"name": "sim", "base_url": sim.url + "/v1", "read_timeout": 30}],
                      models=[{"name": "sim-small", "upstream": "sim"}, {"name": "sim-alias", "upstream": "sim",
                                                                         "upstream_model": "sim-small"}],
                      identities=[{"name": "app", "owner": "a@example.com", "models": ["*"]}],
                      extra={"cache": {"rules": [TINY, {"name": "all", "ttl_s": 60}]}, "usage": {"flush_interval": 0.05}})
    yield g, sim
    g.stop()
    sim.stop()


def body(q: str, stream: bool = True, usage: bool = False, model: str = "sim-small") -> dict:
    out: dict = {"model": model, "messages": [{"role": "user", "content": q}], "max_tokens": TOKENS,
                 "temperature": 0}
    if stream:
        out["stream"] = True
        if usage:
            out["stream_options"] = {"include_usage": True}
    return out


class Seen:
    """One streamed answer as a caller read it: the text, ids, when each content event came, usage, the end."""

    def __init__(self) -> None:
        self.text: list[str] = []
        self.ids: set[str] = set()
        self.times: list[float] = []
        self.usage = None
        self.done = False
        self.error = None

    @property
    def whole(self) -> str:
        return "".join(self.text)


async def stream(client: httpx.AsyncClient, g: Gateway, q: str, seen: Seen, *, usage: bool = False,
                 leave_after: int | None = None, started: asyncio.Event | None = None, model: str = "sim-small") -> Seen:
    """Read a chat stream into ``seen``; ``leave_after``: close the connection after that many content events."""
    async with client.stream("POST", "/v1/chat/completions", json=body(q, usage=usage, model=model),
                             headers={"Authorization": f"Bearer {g.keys['app']}"}) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                seen.done = True
                continue
            event = json.loads(line[6:])
            if "error" in event:
                seen.error = event["error"]
                continue
            seen.ids.add(event["id"])
            if event.get("usage"):
                seen.usage = event["usage"]
            for c in event["choices"]:
                if c["delta"].get("content"):
                    seen.text.append(c["delta"]["content"])
                    seen.times.append(time.monotonic())
                    if started is not None:
                        started.set()
            if leave_after is not None and len(seen.text) >= leave_after:
                return seen  # leaving the block closes the connection mid-stream
    return seen


def client(g: Gateway, n: int = 8) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)  # each stream its own connection
    return httpx.AsyncClient(base_url=g.url, limits=limits, timeout=60)


def chats(sim: Sim) -> int:
    return sim.stats()["chat_requests"]


def test_a_waiters_first_event_comes_with_the_leaders_not_at_its_end(rig):
    g, sim = rig
    before, since = chats(sim), time.time() - 1

    async def go() -> tuple[Seen, Seen, Seen]:
        async with client(g) as c:
            first = asyncio.Event()
            lead = asyncio.ensure_future(stream(c, g, "Tell me, as it comes.", Seen(), started=first))
            await first.wait()  # the leader's first token is out: its stream is upstream now
            w1, w2 = Seen(), Seen()
            await asyncio.gather(stream(c, g, "Tell me, as it comes.", w1, usage=True),
                                 stream(c, g, "Tell me, as it comes.", w2))
            return await lead, w1, w2

    lead, w1, w2 = asyncio.run(go())
    assert chats(sim) - before == 1  # one upstream call
    assert lead.done and w1.done and w2.done and lead.whole and lead.whole == w1.whole == w2.whole
    # the waiters' first events came while the leader's stream still had most of its ~2 s to go
    for w in (w1, w2):
        assert w.times[0] < lead.times[-1] - 0.5, (w.times[0] - lead.times[0], lead.times[-1] - lead.times[0])
        assert w.times[-1] > lead.times[0] + 1.0  # and its last ones as they came (not all at once at the start)
    # each caller its own id; usage only to the one that asked
    assert len(lead.ids) == len(w1.ids) == len(w2.ids) == 1 and len(lead.ids | w1.ids | w2.ids) == 3
    assert w1.usage is not None and w1.usage["completion_tokens"] == TOKENS and w2.usage is None and lead.usage is None
    rows = usage_rows(g, since, 3)
    assert sorted(r["usage_source"] for r in rows) == ["coalesced", "coalesced", "upstream"]
    assert all(r["stream"] and r["status"] == 200 for r in rows)
    followers = [r for r in rows if r["usage_source"] == "coalesced"]
    assert all(r["prompt_tokens"] == 0 and r["completion_tokens"] == 0 and r["ttft_ms"] is not None for r in followers)


def test_a_waiter_that_leaves_mid_stream_cuts_nobody(rig):
    g, sim = rig
    before, s0 = chats(sim), sim.stats()

    async def go() -> tuple[Seen, Seen, Seen]:
        async with client(g) as c:
            first = asyncio.Event()
            lead = asyncio.ensure_future(stream(c, g, "Leave me halfway.", Seen(), started=first))
            await first.wait()
            gone, stay = Seen(), Seen()
            await asyncio.gather(stream(c, g, "Leave me halfway.", gone, leave_after=3),
                                 stream(c, g, "Leave me halfway.", stay))
            return await lead, gone, stay

    lead, gone, stay = asyncio.run(go())
    s1 = sim.stats()
    assert chats(sim) - before == 1
    assert not gone.done and len(gone.text) == 3
    assert lead.done and stay.done and lead.whole == stay.whole and len(lead.text) == TOKENS
    assert s1["streams_completed"] - s0["streams_completed"] == 1 and s1["client_disconnects"] == s0["client_disconnects"]


def test_the_leaders_caller_leaving_does_not_stop_the_upstream_for_the_others(rig):
    g, sim = rig
    before, s0 = chats(sim), sim.stats()

    async def go() -> tuple[Seen, list[Seen]]:
        async with client(g) as c:
            first = asyncio.Event()
            lead = asyncio.ensure_future(stream(c, g, "The first one leaves.", Seen(), started=first, leave_after=4))
            await first.wait()
            rest = [Seen() for _ in range(3)]
            await asyncio.gather(*(stream(c, g, "The first one leaves.", w) for w in rest))
            return await lead, rest

    lead, rest = asyncio.run(go())
    assert chats(sim) - before == 1 and not lead.done
    assert all(w.done and len(w.text) == TOKENS for w in rest) and len({w.whole for w in rest}) == 1
    assert sim.stats()["streams_completed"] - s0["streams_completed"] == 1


def test_a_hundred_identical_streams_through_the_sdk_make_one_upstream_call_and_a_hundred_usage_records(rig):
    g, sim = rig
    time.sleep(0.5)  # the records of the tests before are written
    before, since = chats(sim), time.time()
    n = 100

    async def go() -> list[str]:
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=n, max_keepalive_connections=n), timeout=60)
        sdk = openai.AsyncOpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0, http_client=http)

        async def one(i: int) -> str:
            if i % 4 == 3:  # a quarter ask for the whole answer while the others stream
                got = await sdk.chat.completions.create(**body("A hundred at once.", stream=False))
                return got.choices[0].message.content
            out = await sdk.chat.completions.create(**body("A hundred at once."))
            return "".join([ch.choices[0].delta.content or "" async for ch in out if ch.choices])

        first = asyncio.ensure_future(one(0))
        await asyncio.sleep(0.3)  # the first is upstream by now, and stays in flight ~3 s more
        got = await asyncio.gather(first, *(one(i) for i in range(1, n)))
        await http.aclose()
        return got

    # The leader's first token is held 3 s, so the 99 others (new connections, under a loaded test run) all
    # join it in flight; with only its ~2 s of decoding, a slow machine saw them come after it was stored.
    sim.faults(first_token_delay_ms=3000)
    try:
        texts = asyncio.run(go())
    finally:
        sim.clear_faults()
    assert chats(sim) - before == 1  # the sim's own count: one upstream call for all of them
    assert len(texts) == n and len(set(texts)) == 1 and texts[0]
    rows = [r for r in usage_rows(g, since, n) if r["status"] == 200]
    sources = sorted(r["usage_source"] for r in rows)
    assert len(rows) == n and sources.count("upstream") == 1 and sources.count("coalesced") == n - 1, sources


def test_a_cut_leader_gives_its_followers_an_error_their_sdk_raises(rig):
    g, sim = rig
    sim.faults(disconnect_after_chunks=6)
    try:
        async def go() -> list:
            sdk = openai.AsyncOpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)

            async def one() -> str:
                out = await sdk.chat.completions.create(**body("Cut me short."))
                return "".join([ch.choices[0].delta.content or "" async for ch in out if ch.choices])

            lead = asyncio.ensure_future(one())
            await asyncio.sleep(0.3)
            return await asyncio.gather(lead, one(), one(), return_exceptions=True)

        before = chats(sim)
        got = asyncio.run(go())
        assert chats(sim) - before == 1
        assert all(isinstance(e, openai.APIError) for e in got), got  # never a silent end of a cut stream
    finally:
        sim.clear_faults()


def test_past_its_buffer_a_stream_takes_no_new_follower_and_keeps_serving_those_it_has(rig):
    g, sim = rig
    before = chats(sim)

    async def go() -> tuple[Seen, Seen, Seen]:
        async with client(g) as c:
            first = asyncio.Event()
            q, m = "Too long to hold.", "sim-alias"
            lead = asyncio.ensure_future(stream(c, g, q, Seen(), started=first, model=m))
            await first.wait()
            early = asyncio.ensure_future(stream(c, g, q, Seen(), model=m))  # joins while the buffer holds it all
            await asyncio.sleep(TOKENS * DECODE_MS / 1000 * 0.75)  # ~15 events out: past 1,600 bytes
            late = await stream(c, g, q, Seen(), model=m)  # cannot replay the start: asks the upstream itself
            return await lead, await early, late

    lead, early, late = asyncio.run(go())
    assert chats(sim) - before == 2
    assert lead.done and early.done and late.done and len(lead.text) == TOKENS and lead.whole == early.whole == late.whole


def test_messages_and_responses_streams_follow_a_leader_in_their_own_shape(rig):
    g, sim = rig
    before = chats(sim)

    async def go() -> tuple[list[str], list]:
        a = anthropic.AsyncAnthropic(base_url=g.url, api_key=g.keys["app"], max_retries=0)
        o = openai.AsyncOpenAI(base_url=g.v1, api_key=g.keys["app"], max_retries=0)
        ask = {"model": "sim-small", "max_tokens": TOKENS, "extra_body": {"temperature": 0},
               "messages": [{"role": "user", "content": "Follow me, Claude."}]}

        async def claude() -> tuple[str, str]:
            async with a.messages.stream(**ask) as s:
                return await s.get_final_text(), (await s.get_final_message()).id

        async def responses() -> object:
            events = [e async for e in await o.responses.create(
                model="sim-small", input="Follow me, Responses.", temperature=0, store=False,
                max_output_tokens=TOKENS, stream=True)]
            return events[-1]

        lead_m = asyncio.ensure_future(claude())
        lead_r = asyncio.ensure_future(responses())
        await asyncio.sleep(0.5)  # both leaders are streaming (~2 s each)
        got_m = await asyncio.gather(lead_m, claude(), claude())
        got_r = await asyncio.gather(lead_r, responses(), responses())
        return got_m, got_r

    got_m, got_r = asyncio.run(go())
    assert chats(sim) - before == 2  # one upstream call per API's question
    assert len({t for t, _ in got_m}) == 1 and got_m[0][0] and len({i for _, i in got_m}) == 3
    assert all(e.type in ("response.completed", "response.incomplete") for e in got_r)
    assert len({e.response.output_text for e in got_r}) == 1 and got_r[0].response.output_text
    assert len({e.response.id for e in got_r}) == 3
