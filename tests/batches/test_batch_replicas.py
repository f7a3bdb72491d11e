"""A batch survives its replica (issue 27 item 5's acceptance): two gateways on one SQLite store, 1,000 lines
(chat and embeddings) through the ``openai`` SDK, the replica running the chat batch killed with SIGKILL mid-batch,
the other one resuming it once its lease runs out; every ``custom_id`` exactly once in the output and in usage.
The same on Postgres."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg
import openai
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from store.pg_databases import drop_pg_database, fresh_pg_database  # noqa: E402
from support import Sim, start_gateway  # noqa: E402

from sluice.identity import generate  # noqa: E402

MODELS = [{"name": "sim-small", "upstream": "sim"}, {"name": "sim-embed", "upstream": "sim"}]


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(x).encode() + b"\n" for x in lines)


def _reader(store: str, tmp_path: Path) -> tuple[str, Callable[[str, tuple], list[tuple]]]:
    """The store's URL for the gateways, and a way for the test to read it."""
    if store == "sqlite":
        db = sqlite3.connect(tmp_path / "shared.db", timeout=30)
        return f"sqlite:///{tmp_path}/shared.db", lambda sql, args: db.execute(sql, args).fetchall()
    url = asyncio.run(fresh_pg_database())

    def pg(sql: str, args: tuple) -> list[tuple]:
        async def go() -> list[tuple]:
            conn = await asyncpg.connect(url)
            try:
                n = iter(range(1, 10))
                return [tuple(r) for r in await conn.fetch(
                    "".join(f"${next(n)}" if ch == "?" else ch for ch in sql), *args)]
            finally:
                await conn.close()
        return asyncio.run(go())
    return url, pg


@pytest.mark.timeout(300)
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_a_replica_killed_mid_batch_is_replaced_and_each_line_is_answered_and_charged_once(
        tmp_path: Path, store: str) -> None:
    sim = Sim(tmp_path)
    sim.faults(delay_ms=15)  # long enough that the kill lands mid-batch
    key, admin = generate("dev"), generate("prod", kind="admin")
    url, query = _reader(store, tmp_path)
    shared = {"store": {"url": url}}
    ident = [{"name": "app", "owner": "a@example.com", "models": ["sim-small", "sim-embed"], "keys": [key]}]
    gws = []
    try:
        for name in ("a", "b"):
            d = tmp_path / name
            d.mkdir()
            gws.append(start_gateway(d, upstreams=[{"name": "sim", "base_url": sim.url + "/v1"}], models=MODELS,
                                     identities=ident, extra=shared, admin_key=admin))
        gws[0].keys = gws[1].keys = {"app": key}
        c = openai.OpenAI(base_url=gws[0].v1, api_key=key, max_retries=2, timeout=60.0)
        chat = [{"custom_id": f"chat-{i}", "method": "POST", "url": "/v1/chat/completions",
                 "body": {"model": "sim-small", "messages": [{"role": "user", "content": f"q {i}"}], "max_tokens": 4}}
                for i in range(600)]
        emb = [{"custom_id": f"emb-{i}", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "sim-embed", "input": f"text {i}"}} for i in range(400)]
        batches = {}
        for lines, endpoint in ((chat, "/v1/chat/completions"), (emb, "/v1/embeddings")):
            f = c.files.create(file=("in.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
            batches[endpoint] = c.batches.create(input_file_id=f.id, endpoint=endpoint,  # type: ignore[arg-type]
                                                 completion_window="24h").id
        chat_id = batches["/v1/chat/completions"]
        deadline = time.monotonic() + 60
        while True:  # mid-batch: some lines answered, most not
            done = c.batches.retrieve(chat_id).request_counts.completed
            holder = (query("SELECT holder FROM leases WHERE name = ?", (f"batch:{chat_id}",)) or [None])[0]
            if done >= 100 and holder:
                break
            assert time.monotonic() < deadline, "the chat batch did not start"
            time.sleep(0.05)
        pid = int(holder[0].split(":")[1])
        victim = next(g for g in gws if g.proc.popen.pid == pid)
        survivor = next(g for g in gws if g is not victim)
        os.kill(pid, signal.SIGKILL)
        victim.proc.popen.wait()
        assert done < 600
        c = openai.OpenAI(base_url=survivor.v1, api_key=key, max_retries=2, timeout=60.0)
        for endpoint, bid in batches.items():
            deadline = time.monotonic() + 120
            while (b := c.batches.retrieve(bid)).status != "completed":
                assert b.status in ("validating", "in_progress", "finalizing"), b
                assert time.monotonic() < deadline, b
                time.sleep(0.3)
            lines = chat if endpoint == "/v1/chat/completions" else emb
            assert b.request_counts.completed == len(lines) and b.request_counts.failed == 0, b.request_counts
            out = [json.loads(x) for x in c.files.content(b.output_file_id).text.splitlines()]  # type: ignore[arg-type]
            ids = [o["custom_id"] for o in out]
            assert len(ids) == len(lines) and set(ids) == {x["custom_id"] for x in lines}  # each exactly once
            rids = {o["response"]["request_id"] for o in out}
            deadline = time.monotonic() + 15
            while True:  # usage: one row per line, the one its answer names
                rows = query("SELECT request_id, status, prompt_tokens, completion_tokens FROM usage "
                             "WHERE request_id LIKE ?", (bid + "%",))
                answered = [r for r in rows if r[0] in rids]
                if len(answered) >= len(lines) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert sorted(r[0] for r in answered) == sorted(rids)
            # beside them only the gateway's own back-pressure on a line that then ran again (a loaded machine):
            # a refusal's row of its own status, charging nothing
            assert all(r[1] in (429, 503) and not r[2] and not r[3] for r in rows if r[0] not in rids), rows
    finally:
        for g in gws:
            g.stop()
        sim.stop()
        if store == "postgres":
            asyncio.run(drop_pg_database(url))
