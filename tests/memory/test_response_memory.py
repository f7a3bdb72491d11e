"""Stored responses (the Responses API's agent memory) on SQLite and Postgres: only their identity reads
them back; a chain is rebuilt whole on another replica or not at all; what rests in the database is
sealed per identity and bound to its row; expired ones are invisible, then purged in batches."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select, update

from sluice.core.config import Responses
from sluice.memory import BrokenChain, ResponseMemory, Vault
from sluice.store.response_records import ResponseRecords, stored_responses
from sluice.store.sql import SqlStore

PEPPER = b"p" * 32


@pytest.fixture()
async def replicas(store_url: str) -> AsyncIterator[tuple[ResponseMemory, ResponseMemory, SqlStore]]:
    """Two replicas' memories on one database, each with its own vault over the same pepper."""
    a, b = SqlStore(store_url), SqlStore(store_url)
    await a.open()
    await b.open()
    try:
        yield (ResponseMemory(ResponseRecords(a), Vault(PEPPER), Responses(max_chain=5)),
               ResponseMemory(ResponseRecords(b), Vault(PEPPER), Responses(max_chain=5)), a)
    finally:
        await a.close()
        await b.close()


def answer(rid: str, previous: str | None, text: str) -> dict:
    return {"id": rid, "object": "response", "model": "m", "previous_response_id": previous,
            "output": [{"id": "msg_" + rid, "type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": text}]}]}


def asked(text: str) -> list[dict]:
    return [{"id": "in_" + text, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}]


async def test_a_chain_of_three_is_rebuilt_in_order_on_another_replica(replicas) -> None:
    one, two, _ = replicas
    await one.save("id-a", answer("resp_1", None, "one"), asked("q1"))
    await two.save("id-a", answer("resp_2", "resp_1", "two"), asked("q2"))
    await one.save("id-a", answer("resp_3", "resp_2", "three"), asked("q3"))
    items = await two.history("resp_3", "id-a")
    assert [i["id"] for i in items] == ["in_q1", "msg_resp_1", "in_q2", "msg_resp_2", "in_q3", "msg_resp_3"]


async def test_another_identitys_response_is_as_unknown_as_one_that_never_was(replicas) -> None:
    one, two, _ = replicas
    await one.save("id-a", answer("resp_x", None, "mine"), asked("q"))
    assert (await two.load("resp_x", "id-a")).response["output"][0]["content"][0]["text"] == "mine"
    assert await two.load("resp_x", "id-b") is None and await two.load("resp_nope", "id-a") is None
    with pytest.raises(BrokenChain):
        await two.history("resp_x", "id-b")
    assert not await two.delete("resp_x", "id-b")
    assert await two.load("resp_x", "id-a") is not None


async def test_a_deleted_or_expired_link_anywhere_breaks_the_chain(replicas) -> None:
    one, two, store = replicas
    for n, prev in ((1, None), (2, "resp_d1"), (3, "resp_d2")):
        await one.save("id-a", answer(f"resp_d{n}", prev, str(n)), asked(str(n)))
    assert await two.delete("resp_d1", "id-a")  # the first link gone: the head is still there, its chain is not
    assert await two.load("resp_d3", "id-a") is not None
    with pytest.raises(BrokenChain) as err:
        await two.history("resp_d3", "id-a")
    assert not err.value.too_long
    await one.save("id-a", answer("resp_e1", None, "e"), asked("e"))
    await one.save("id-a", answer("resp_e2", "resp_e1", "e2"), asked("e2"))
    async with store.engine.begin() as conn:
        await conn.execute(update(stored_responses).where(stored_responses.c.id == "resp_e1").values(expires_at=time.time() - 1))
    with pytest.raises(BrokenChain):
        await two.history("resp_e2", "id-a")
    assert await two.load("resp_e1", "id-a") is None


async def test_a_chain_longer_than_max_chain_is_refused_as_too_long(replicas) -> None:
    one, _, _ = replicas
    prev = None
    for n in range(6):
        await one.save("id-a", answer(f"resp_l{n}", prev, str(n)), asked(str(n)))
        prev = f"resp_l{n}"
    assert len(await one.history("resp_l4", "id-a")) == 10  # five links: the most it keeps
    with pytest.raises(BrokenChain) as err:
        await one.history("resp_l5", "id-a")
    assert err.value.too_long


async def test_what_rests_is_sealed_per_identity_and_bound_to_its_row(replicas) -> None:
    one, two, store = replicas
    await one.save("id-a", answer("resp_s1", None, "the secret plan"), asked("plan"))
    await one.save("id-a", answer("resp_s2", None, "other"), asked("other"))
    async with store.engine.connect() as conn:
        rows = {r.id: r for r in await conn.execute(select(stored_responses))}
    assert b"secret" not in rows["resp_s1"].sealed.encode() and "plan" not in rows["resp_s1"].sealed
    # another identity's key cannot open it, nor another pepper
    assert Vault(b"q" * 32) and ResponseMemory(ResponseRecords(store), Vault(b"q" * 32))._open("id-a", "resp_s1", rows["resp_s1"].sealed) is None
    assert one._open("id-b", "resp_s1", rows["resp_s1"].sealed) is None
    # a sealed value moved onto another row of the same identity does not open there
    async with store.engine.begin() as conn:
        await conn.execute(update(stored_responses).where(stored_responses.c.id == "resp_s2").values(sealed=rows["resp_s1"].sealed))
    assert await two.load("resp_s2", "id-a") is None
    assert (await two.load("resp_s1", "id-a")).input[0]["id"] == "in_plan"


async def test_purge_deletes_only_what_expired_in_bounded_batches(replicas) -> None:
    one, _, store = replicas
    for n in range(7):
        await one.save("id-p", answer(f"resp_p{n}", None, str(n)), asked(str(n)))
    old = [f"resp_p{n}" for n in range(5)]
    async with store.engine.begin() as conn:
        await conn.execute(update(stored_responses).where(stored_responses.c.id.in_(old)).values(expires_at=time.time() - 1))
    records = ResponseRecords(store)
    assert await records.purge(batch=2) == 5
    async with store.engine.connect() as conn:
        left = {r.id for r in await conn.execute(select(stored_responses.c.id).where(stored_responses.c.identity_id == "id-p"))}
    assert left == {"resp_p5", "resp_p6"}
