"""The work floor: ../shared/bench/floor.py plus the governance work sluice does per request, written flat.

A measuring stick, not a design, like floor.py: no timeouts, limits, routing, policy or error
handling. It separates what the work costs from what sluice's structure costs. The work itself is
sluice's own code wherever there is a piece of it:
- the bearer key, through the keyed hash (``identity.keys.Hasher``, cached as in sluice), and a
  scope check;
- the strict typed decode of the request (``core.wire.ChatCompletionRequest``), and its re-encode
  for the upstream, streams asking for usage;
- a whole reply's output minimisation check (``guard.minimise``) and its usage
  (``upstream.usage``);
- a stream's event relay with usage capture (``upstream.relay.SSERelay``) and the ``sampled``
  minimisation check of its first and closing events;
- one usage record per request (``core.types.UsageRecord``), folded into prometheus_client
  metrics every 250 ms and written to SQLite by the ledger's own batch insert
  (``store.usage_rows.SqliteUsageRows``).

    BENCH_KEY=... python bench/work_floor.py PORT plain|stream   # `make bench-floor` runs it beside floor.py
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import sys
import tempfile
import time

import httptools
import msgspec
import uvloop
from prometheus_client import CollectorRegistry, Counter, Histogram

from sluice.core.types import UsageRecord
from sluice.core.wire import ChatCompletionRequest, StreamOptions
from sluice.guard.minimise import FIRST_EVENTS, sampled, shape
from sluice.identity.keys import Hasher
from sluice.store import schema
from sluice.store.usage_rows import SqliteUsageRows
from sluice.upstream.relay import SSERelay
from sluice.upstream.usage import reported_usage

PORT, MODE = int(sys.argv[1]), sys.argv[2]
UPSTREAM = ("127.0.0.1", 18001 if MODE == "stream" else 18000)
hasher = Hasher(b"bench-pepper-not-for-production-0001")
KEYS = {hasher.digest(os.environ["BENCH_KEY"]): ("bench", frozenset({"mock-model", "mock-stream"}))}
decode_request = msgspec.json.Decoder(ChatCompletionRequest).decode
encode = msgspec.json.encode
SHAPE = shape(frozenset())
USAGE_ON = StreamOptions(include_usage=True)
registry = CollectorRegistry()
REQUESTS = Counter("requests", "", ["identity", "model", "status"], registry=registry)
TOKENS = Counter("tokens", "", ["identity", "model"], registry=registry)
LATENCY = Histogram("latency_ms", "", ["model"], registry=registry)
records: list[UsageRecord] = []
request_ids = itertools.count()


def record(who: str, model: str, prompt: int, completion: int, t0: float, stream: bool) -> None:
    records.append(UsageRecord(request_id=f"req_{next(request_ids):x}", ts=time.time(), identity_id=who, key_id="key",
                               endpoint="chat.completions", model=model, upstream="mock", status=200,
                               prompt_tokens=prompt, completion_tokens=completion,
                               latency_ms=(time.monotonic() - t0) * 1000.0, stream=stream, usage_source="upstream"))


class UpstreamConnection(asyncio.Protocol):
    """One kept-alive upstream connection: collects a reply, or relays a stream event by event."""

    def __init__(self, idle: list) -> None:
        self.idle, self.parser, self.done, self.body, self.sink = idle, httptools.HttpResponseParser(self), None, [], None
        self.relay: SSERelay | None = None
        self.first = 0

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, chunk: bytes) -> None:
        if self.sink is None:
            self.body.append(chunk)
            return
        out = self.relay.feed(chunk)  # type: ignore[union-attr]
        if out:
            if self.first:
                part, n = sampled(out, self.first)
                self.first -= n
                SHAPE.pure(part)
            self.sink.write(b"%x\r\n%s\r\n" % (len(out), out))

    def on_message_complete(self) -> None:
        if self.sink is not None:
            self.sink.write(b"0\r\n\r\n")
        body, self.body, self.sink = b"".join(self.body), [], None
        done, self.done = self.done, None
        self.idle.append(self)
        done.set_result(body)


idle: list = []


async def forward(body: bytes, sink=None, relay: SSERelay | None = None) -> bytes:
    loop = asyncio.get_running_loop()
    conn = idle.pop() if idle else (await loop.create_connection(lambda: UpstreamConnection(idle), *UPSTREAM))[1]
    conn.done, conn.sink, conn.relay, conn.first = loop.create_future(), sink, relay, FIRST_EVENTS
    conn.transport.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: upstream\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return await conn.done


class Client(asyncio.Protocol):
    def connection_made(self, transport) -> None:
        self.transport, self.parser, self.headers, self.body = transport, httptools.HttpRequestParser(self), {}, []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        headers, body, self.headers, self.body = self.headers, b"".join(self.body), {}, []
        asyncio.ensure_future(self.handle(headers, body))

    async def handle(self, headers: dict, body: bytes) -> None:
        t0 = time.monotonic()
        auth = headers.get(b"authorization", b"").decode("latin-1")
        who = KEYS.get(hasher.digest(auth[7:].strip())) if auth[:7].lower() == "bearer " else None
        if who is None:
            self.transport.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
            return
        req = decode_request(body)
        if req.model not in who[1]:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            return
        if MODE == "stream":
            upstream_body = encode(msgspec.structs.replace(req, model="mock-model", stream_options=USAGE_ON))
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            relay = SSERelay(strip_usage=True)
            await forward(upstream_body, sink=self.transport, relay=relay)
            usage = relay.usage
        else:
            out = await forward(encode(msgspec.structs.replace(req, model="mock-model")))
            SHAPE.minimise(out)
            usage = reported_usage(out)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(out), out))
        prompt, completion = (usage.prompt_tokens, usage.completion_tokens) if usage is not None else (0, 0)
        record(who[0], req.model, prompt, completion, t0, MODE == "stream")


async def ledger(rows: SqliteUsageRows) -> None:
    global records
    while True:
        await asyncio.sleep(0.25)
        batch, records = records, []
        for r in batch:  # the fold, one record at a time (sluice sums a batch per series first)
            REQUESTS.labels(r.identity_id, r.model, "200").inc()
            TOKENS.labels(r.identity_id, r.model).inc(r.prompt_tokens + r.completion_tokens)
            LATENCY.labels(r.model).observe(r.latency_ms)
        for i in range(0, len(batch), 500):
            await rows.write(batch[i:i + 500])


async def main() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="work-floor-"), "usage.db")
    db = sqlite3.connect(path)
    db.executescript(";\n".join(str(sqlite_ddl) for sqlite_ddl in _ddl()) + ";")
    db.close()
    asyncio.ensure_future(ledger(SqliteUsageRows(path, 5.0)))
    await asyncio.get_running_loop().create_server(Client, "127.0.0.1", PORT, backlog=1024)
    await asyncio.Event().wait()


def _ddl() -> list:
    """The usage table, its indexes and its rollups as sluice's schema declares them, for SQLite."""
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable
    dialect = sqlite.dialect()
    return [CreateTable(schema.usage).compile(dialect=dialect)] + [
        CreateIndex(ix).compile(dialect=dialect) for ix in schema.usage.indexes] + [
        CreateTable(r).compile(dialect=dialect) for r in (schema.usage_minute, schema.usage_hour, schema.usage_day)]


uvloop.run(main())
