"""The OpenAI Responses API through sluice (issue 24, item 2): the official ``openai`` SDK against real
gateways in front of the sim, over either wire to it (``translated``: its chat route; ``native``: its own
stateless ``/v1/responses``, as an ``api: responses`` upstream, in ``test_responses_native`` too). A response is stored for its identity only (another's id is
the 404 an unknown one is, on every route), a chain of ``previous_response_id`` is rebuilt on any
replica (two gateways on one Postgres), a gone link is a 404 and never ignored, ``store: false`` keeps
nothing, offboarding deletes the memory, and the tool boundary holds in Responses streams."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

import sluice.sim

sys.path.insert(0, str(Path(__file__).resolve().parent))
from responses_grammar import parse_sse, validate  # noqa: E402
from store.pg_databases import drop_pg_database, fresh_pg_database  # noqa: E402
from support import Gateway, Sim, start_gateway  # noqa: E402

from sluice.identity import generate  # noqa: E402

SIM_TOKENIZER = str(Path(sluice.sim.__file__).with_name("tokenizer.json"))
FUNCTIONS = [{"type": "function", "name": "get_weather", "description": "Weather for a city.",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
TOOLS = [{"name": "get_weather", "risk": "read", "identities": ["app", "other"]},
         {"name": "delete_repo", "risk": "write", "identities": ["nobody"]},
         {"name": "transfer_funds", "risk": "high", "identities": ["app"]}]
MODELS = [{"name": "sim-small", "upstream": "sim", "tokenizer": SIM_TOKENIZER}]


RIGS = ("translated", "native")


def upstream(sim: Sim, kind: str) -> dict:
    """The sim as the gateway's upstream ``sim``, over ``kind``'s wire: its chat route (translated), or its own
    Responses route (native: ``api: responses``, stateless, so the gateway sends each chain whole)."""
    return {"name": "sim", "base_url": sim.url + "/v1", **({"api": "responses"} if kind == "native" else {})}


@pytest.fixture(scope="module", params=RIGS)
def rig(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Sim]]:
    tmp = tmp_path_factory.mktemp("responses-gw")
    sim = Sim(tmp)
    g = start_gateway(
        tmp, upstreams=[upstream(sim, request.param)], models=MODELS,
        identities=[{"name": "app", "owner": "team-a@example.com", "models": ["sim-small"]},
                    {"name": "other", "owner": "team-b@example.com", "models": ["sim-small"]},
                    {"name": "leaver", "owner": "leaver@example.com", "models": ["sim-small"]}],
        extra={"tools": TOOLS},
    )
    yield g, sim
    g.stop()
    sim.stop()


def client(g: Gateway, who: str = "app") -> openai.OpenAI:
    return openai.OpenAI(base_url=g.v1, api_key=g.keys[who], max_retries=0, timeout=15.0)


def test_a_response_is_answered_stored_and_retrieved_with_one_id(rig) -> None:
    g, _ = rig
    c = client(g)
    r = c.responses.create(model="sim-small", input="Tell me a story.", instructions="Be brief.", max_output_tokens=7)
    assert r.id.startswith("resp_") and r.status == "incomplete" and r.usage.output_tokens == 7
    assert len(r.output_text.split()) == 7
    again, third = c.responses.retrieve(r.id), c.responses.retrieve(r.id)
    assert again.id == third.id == r.id and again.output_text == r.output_text and again.usage == r.usage
    items = c.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "Tell me a story."
    rows = g.admin("GET", "/admin/usage", params={"limit": 50}).json()["data"]
    mine = [row for row in rows if row["endpoint"] == "responses" and row["completion_tokens"] == 7]
    assert mine and mine[0]["api"] == "responses", rows


def test_a_streamed_response_passes_the_grammar_and_is_stored_as_its_assembly(rig) -> None:
    g, _ = rig
    r = httpx.post(g.v1 + "/responses", json={"model": "sim-small", "input": "Write a poem.", "stream": True,
                                              "max_output_tokens": 40},
                   headers={"Authorization": f"Bearer {g.keys['app']}"}, timeout=15)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    events = parse_sse(r.content)
    assert validate(events) in ("response.completed", "response.incomplete")
    final = events[-1][1]["response"]
    stored = client(g).responses.retrieve(final["id"]).model_dump(mode="json", exclude_none=True)
    assert stored["output"] == final["output"] and stored["usage"] == final["usage"]
    assert {e[1].get("response", {}).get("id", final["id"]) for e in events} == {final["id"]}


def test_a_function_call_is_answered_with_its_output_through_previous_response_id(rig) -> None:
    g, _ = rig
    c = client(g)
    first = c.responses.create(model="sim-small", input='sim:call get_weather {"city": "Oslo"}', tools=FUNCTIONS)
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Oslo"}
    second = c.responses.create(model="sim-small", previous_response_id=first.id, tools=FUNCTIONS, max_output_tokens=5,
                                input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "12 C"}])
    assert second.status in ("completed", "incomplete") and second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens  # the call and its output were sent again
    with pytest.raises(openai.BadRequestError) as bad:  # an output for a call no turn made
        c.responses.create(model="sim-small", input=[{"type": "function_call_output", "call_id": "call_nope", "output": "x"}])
    assert bad.value.body["param"] and "call_nope" not in json.dumps(bad.value.body)


def test_another_identitys_response_is_the_404_of_an_unknown_one_on_every_route(rig) -> None:
    g, _ = rig
    mine = client(g).responses.create(model="sim-small", input="A secret plan.", max_output_tokens=3)
    other = client(g, "other")
    answers = []
    for rid in (mine.id, "resp_" + "0" * 32):
        for call in (lambda: other.responses.retrieve(rid), lambda: other.responses.delete(rid),
                     lambda: other.responses.input_items.list(rid),
                     lambda: other.responses.create(model="sim-small", input="go on", previous_response_id=rid)):
            with pytest.raises(openai.NotFoundError) as err:
                call()
            answers.append(json.dumps({k: v for k, v in err.value.body.items() if k != "message"}))
    assert len(set(answers[:4])) == len(set(answers[4:])) and set(answers[:4]) == set(answers[4:]), answers
    assert client(g).responses.retrieve(mine.id).output_text == mine.output_text  # still there for its own


def test_a_chain_with_a_deleted_link_is_404_never_ignored_and_store_false_keeps_nothing(rig) -> None:
    g, _ = rig
    c = client(g)
    one = c.responses.create(model="sim-small", input="one", max_output_tokens=3)
    two = c.responses.create(model="sim-small", input="two", previous_response_id=one.id, max_output_tokens=3)
    c.responses.delete(one.id)
    with pytest.raises(openai.NotFoundError) as err:
        c.responses.create(model="sim-small", input="three", previous_response_id=two.id)
    assert err.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        c.responses.delete(one.id)
    unkept = c.responses.create(model="sim-small", input="forget me", store=False, max_output_tokens=3)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(unkept.id)


def test_a_tool_outside_the_grant_leaves_nothing_in_a_responses_stream(rig) -> None:
    g, _ = rig
    blocked = [{"type": "function", "name": "delete_repo", "parameters": {"type": "object"}}]
    r = httpx.post(g.v1 + "/responses", timeout=15, headers={"Authorization": f"Bearer {g.keys['app']}"},
                   json={"model": "sim-small", "stream": True, "tools": FUNCTIONS + blocked,
                         "input": 'sim:call delete_repo {"repo": "prod"}'})
    if r.status_code == 200:
        events = parse_sse(r.content)
        validate(events)
        assert "delete_repo" not in r.text and '"prod"' not in r.text
        assert not [e for e in events if e[0] == "response.output_item.added" and e[1]["item"]["type"] == "function_call"]
    else:  # refused before any work: the tool is not the caller's to offer
        assert r.status_code in (400, 403) and "delete_repo" in r.json()["error"]["message"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_high_risk_call_is_held_in_a_response_and_its_approval_redeems_once(rig, stream: bool) -> None:
    g, _ = rig
    pay = [{"type": "function", "name": "transfer_funds", "parameters": {"type": "object"}}]
    args = {"to": "acct-9", "amount": 5}
    ask = {"model": "sim-small", "tools": pay, "input": f"sim:call transfer_funds {json.dumps(args)}"}
    if stream:
        r = httpx.post(g.v1 + "/responses", json={**ask, "stream": True}, timeout=15,
                       headers={"Authorization": f"Bearer {g.keys['app']}"})
        events = parse_sse(r.content)
        validate(events)
        final = events[-1][1]["response"]
        output = final["output"]
    else:
        output = client(g).responses.create(**ask).model_dump(mode="json")["output"]
    assert not [o for o in output if o["type"] == "function_call"] and "acct-9" not in json.dumps(output)
    text = "".join(p["text"] for o in output if o["type"] == "message" for p in o["content"])
    m = re.search(r"approval id (apv_[A-Za-z0-9_-]+)", text)
    assert m, text
    made = g.admin("POST", "/admin/identities", json={"name": f"approver-{int(stream)}", "owner": "risk@example.com",
                                                      "roles": ["operator"]})
    assert made.status_code == 201, made.text
    key = g.admin("POST", f"/admin/identities/{made.json()['id']}/keys", json={"plane": "control"}).json()["key"]
    decided = httpx.post(g.admin_url + f"/admin/tool-approvals/{m.group(1)}/decision", json={"approved": True},
                         headers={"Authorization": f"Bearer {key}"}, timeout=10)
    assert decided.status_code == 200, decided.text
    redeem = [httpx.post(g.v1 + f"/tool-approvals/{m.group(1)}/redeem", json={"arguments": args}, timeout=10,
                         headers={"Authorization": f"Bearer {g.keys['app']}"}) for _ in range(2)]
    assert [r.status_code for r in redeem] == [200, 409], [r.text for r in redeem]


def test_offboarding_an_owner_deletes_the_stored_responses_of_its_identities(rig) -> None:
    g, _ = rig
    kept = client(g, "leaver").responses.create(model="sim-small", input="remember this", max_output_tokens=3)
    db = sqlite3.connect(g.tmp / "sluice.db")
    count = "SELECT count(*) FROM stored_responses WHERE id = ?"
    assert db.execute(count, (kept.id,)).fetchone()[0] == 1
    off = g.admin("POST", "/admin/owners/leaver@example.com/offboard", json={})
    assert off.status_code == 200, off.text
    assert db.execute(count, (kept.id,)).fetchone()[0] == 0


def test_sluice_responses_purge_deletes_what_expired_and_an_expired_response_is_gone_before_it(rig) -> None:
    g, _ = rig
    c = client(g)
    old, live = (c.responses.create(model="sim-small", input=f"note {n}", max_output_tokens=2) for n in range(2))
    db = sqlite3.connect(g.tmp / "sluice.db")
    with db:
        db.execute("UPDATE stored_responses SET expires_at = 1 WHERE id = ?", (old.id,))
    with pytest.raises(openai.NotFoundError):  # past its retention: gone for its caller at once
        c.responses.retrieve(old.id)
    done = subprocess.run([sys.executable, "-m", "sluice", "responses", "purge", "-c", str(g.config_path)],
                          capture_output=True, text=True, timeout=60, cwd=g.tmp)
    assert done.returncode == 0 and "purged 1 stored responses" in done.stdout, done.stdout + done.stderr
    assert db.execute("SELECT count(*) FROM stored_responses WHERE id IN (?, ?)", (old.id, live.id)).fetchone()[0] == 1
    assert c.responses.retrieve(live.id).id == live.id


@pytest.fixture(scope="module", params=RIGS)
def replicas(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    """Two gateways on one Postgres database: any replica may serve any turn of a chain."""
    pg = asyncio.run(fresh_pg_database())
    tmp = tmp_path_factory.mktemp("responses-replicas")
    sim = Sim(tmp)
    key = generate("dev")
    ident = [{"name": "app", "owner": "team-a@example.com", "models": ["sim-small"], "keys": [key]}]
    common = {"upstreams": [upstream(sim, request.param)], "models": MODELS, "identities": ident,
              "extra": {"store": {"url": pg}}}
    for side in ("a", "b"):
        (tmp / side).mkdir()
    one, two = start_gateway(tmp / "a", **common), start_gateway(tmp / "b", **common)
    one.keys = two.keys = {"app": key}
    try:
        yield one, two
    finally:
        one.stop()
        two.stop()
        sim.stop()
        asyncio.run(drop_pg_database(pg))


def test_a_chain_of_three_alternates_replicas_on_postgres(replicas) -> None:
    one, two = replicas
    a, b = client(one), client(two)
    first = a.responses.create(model="sim-small", input="sim:say Oslo is cold.", max_output_tokens=20)
    second = b.responses.create(model="sim-small", input="sim:say Bergen is wet.", previous_response_id=first.id,
                                max_output_tokens=20)
    third = a.responses.create(model="sim-small", input="And Tromso?", previous_response_id=second.id, max_output_tokens=5)
    assert first.output_text == "Oslo is cold." and second.output_text == "Bergen is wet."
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    # each later turn carried every earlier input and output: at least their tokens more than the one before
    assert second.usage.input_tokens >= first.usage.input_tokens + first.usage.output_tokens
    assert third.usage.input_tokens >= second.usage.input_tokens + second.usage.output_tokens
    assert b.responses.retrieve(third.id).previous_response_id == second.id
    assert [i.content[0].text for i in b.responses.input_items.list(third.id).data] == ["And Tromso?"]


BIG_IMAGE = "data:image/png;base64," + "A" * (10 * 1024 * 1024)


@pytest.mark.parametrize(("path", "body", "auth"), [
    ("/v1/messages", {"model": "sim-small", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * (10 * 1024 * 1024)}}]}]},
     "x-api-key"),
    ("/v1/responses", {"model": "sim-small", "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": BIG_IMAGE}]}]}, "Authorization"),
], ids=["messages", "responses"])
def test_a_10_mb_image_is_a_413_in_the_apis_own_shape_and_nothing_is_echoed(rig, path: str, body: dict, auth: str) -> None:
    g, sim = rig
    before = sim.stats().get("requests", 0)
    key = g.keys["app"] if auth == "x-api-key" else f"Bearer {g.keys['app']}"
    r = httpx.post(g.url + path, json=body, headers={auth: key}, timeout=30)
    assert r.status_code == 413, r.text[:300]
    assert len(r.content) < 1000 and b"AAAA" not in r.content
    if path == "/v1/messages":
        assert r.json()["type"] == "error" and r.json()["error"]["type"] == "request_too_large"
    else:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert sim.stats().get("requests", 0) == before


@pytest.mark.parametrize("body", [
    b'{"model": "sim-small", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": 5}]}]}',
    b'{"model": "sim-small", "input": [{"type": "no_such_item"}]}',
    b'{"model": "sim-small", "input": "hi", "tools": [{"type": "function"}]}',
    b'{"model": "sim-small", "input": "hi", "max_output_tokens": "lots"}',
    b'{"model": "sim-small", "input": "hi", "previous_response_id": 7}',
    b'{"model": "sim-small", "input": [{"type": "function_call_output", "call_id": "secret-call-xyz", "output": "x"}]}',
    b'[{"model": "sim-small"}]',
    b'{"model": "sim-small", "input": "hi"',
], ids=["text-not-a-string", "unknown-item", "tool-without-name", "tokens-not-an-int", "previous-not-a-string",
        "output-without-call", "array", "truncated"])
def test_bad_responses_input_is_a_shaped_400_that_reaches_no_model_and_echoes_nothing(rig, body: bytes) -> None:
    g, sim = rig
    before = sim.stats().get("requests", 0)
    r = httpx.post(g.v1 + "/responses", content=body, timeout=15,
                   headers={"Authorization": f"Bearer {g.keys['app']}", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert "secret-call-xyz" not in r.text and "lots" not in r.text
    assert sim.stats().get("requests", 0) == before
