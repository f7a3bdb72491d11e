"""Embeddings micro-batching (issue 27): concurrent embeddings requests to one upstream replica, for the same
upstream model and parameters, go upstream as one call; each caller gets back exactly its own vectors, in its
own order from index 0, and its own share of the usage.

It stands in for the transport's ``send`` at the very end of the path (``pipeline.forward``), so every caller
was authenticated, authorized, limited and guarded alone before it joins a batch, and is settled and accounted
alone after. Only requests whose bodies are identical but for ``input`` are combined: the same upstream model,
``encoding_format``, ``dimensions`` and ``user`` (an end-user id the upstream attributes the call to), and the
same kind of input (texts, or token arrays: OpenAI refuses a mix).

Usage: the upstream reports one ``prompt_tokens`` for the batch. Each caller is charged its own prompt count as
the gateway counts it (the model's ``tokenizer:``, the real tokenizer of an OpenAI model, token arrays by their
length); when those counts add up to the upstream's total they are exactly what each caller would have been
charged alone (``usage_source: batched``). When they do not (an estimate), the upstream's total is shared out in
proportion to them, largest remainders first, so the callers' numbers still add up to what the upstream charged
(``usage_source: apportioned``).

Errors: an answer that may be about one caller's input (400, 413, 422, an answer too large to read, a 200 that
cannot be split) sends each member again alone, so each gets the answer it would have got alone; any other
failure (429, 5xx, a timeout, a lost connection) is about the upstream, and each member gets its own copy of it
(its own retries and fallbacks follow in ``pipeline.forward``). The call runs in a task of its own: a caller
that leaves cancels only its own wait.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from ..core.errors import GatewayError
from ..core.routing_config import EmbeddingsBatching, Upstream
from .base import Transport, UpstreamReply

__all__ = ["BatchedReply", "EmbedBatcher", "batchers", "shares"]

_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_items = msgspec.json.Decoder(list[msgspec.Raw])
_encode = msgspec.json.encode
# statuses that may be about one member's input: each is sent again alone
_PER_INPUT = frozenset({400, 413, 422})


class _Item(msgspec.Struct):
    index: int
    embedding: msgspec.Raw


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0


_data = msgspec.json.Decoder(list[_Item])
_usage = msgspec.json.Decoder(_Usage | None)


class BatchedReply(UpstreamReply):
    """One caller's part of a batch's answer; ``source`` says how its usage was split (``batched``: its own
    count, exact; ``apportioned``: a share of the upstream's total)."""

    __slots__ = ("source",)

    def __init__(self, body: bytes, source: str) -> None:
        super().__init__(200, body)
        self.source = source


class _Member:
    __slots__ = ("body", "items", "weight", "future")

    def __init__(self, body: bytes, items: list[bytes], weight: int, future: asyncio.Future) -> None:
        self.body = body  # its own request, sent alone if the batch's answer may be about its input
        self.items = items  # its inputs, each as JSON
        self.weight = weight  # its prompt tokens as the gateway counts them
        self.future = future


class _Batch:
    __slots__ = ("path", "head", "members", "inputs", "tokens", "timer")

    def __init__(self, path: str, head: dict[str, msgspec.Raw]) -> None:
        self.path = path
        self.head = head  # the request's fields but input
        self.members: list[_Member] = []
        self.inputs = 0
        self.tokens = 0
        self.timer: asyncio.TimerHandle | None = None


class EmbedBatcher:
    """Gathers one replica's embeddings requests for ``batch_window_ms`` and sends each batch as one call."""

    __slots__ = ("_transport", "_window", "_max_inputs", "_max_tokens", "_open", "_tasks", "_calls")

    def __init__(self, transport: Transport, settings: EmbeddingsBatching,
                 calls: Callable[[int], None] = lambda _n: None) -> None:
        self._transport = transport
        self._calls = calls  # told of each upstream call and how many callers it carried (the metrics)
        self._window = settings.batch_window_ms / 1000.0
        self._max_inputs = settings.max_batch_inputs
        self._max_tokens = settings.max_batch_tokens
        self._open: dict[tuple, _Batch] = {}  # the batch still gathering, per key
        self._tasks: set[asyncio.Task] = set()  # batches in flight (held: a loop keeps only weak references)

    async def send(self, path: str, body: bytes, weight: int) -> UpstreamReply:
        """This caller's answer, as ``Transport.send`` gives it: from a batch, or alone."""
        parsed = _parse(body)
        if parsed is None:
            self._calls(1)
            return await self._transport.send(path, body)
        head, kind, items = parsed
        n = len(items)
        if n >= self._max_inputs or weight >= self._max_tokens:  # a batch by itself
            self._calls(1)
            return await self._transport.send(path, body)
        key = (path, kind, _encode(head))
        batch = self._open.get(key)
        if batch is not None and (batch.inputs + n > self._max_inputs or batch.tokens + weight > self._max_tokens):
            self._flush(key, batch)  # full: it goes now, and this caller starts the next
            batch = None
        loop = asyncio.get_running_loop()
        if batch is None:
            batch = self._open[key] = _Batch(path, head)
            batch.timer = loop.call_later(self._window, self._flush, key, batch)
        future = loop.create_future()
        batch.members.append(_Member(body, items, weight, future))
        batch.inputs += n
        batch.tokens += weight
        if batch.inputs >= self._max_inputs or batch.tokens >= self._max_tokens:
            self._flush(key, batch)
        return await future  # a caller that leaves cancels this future only; the batch goes on

    def _flush(self, key: tuple, batch: _Batch) -> None:
        if self._open.get(key) is batch:
            del self._open[key]
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        members = [m for m in batch.members if not m.future.done()]  # who left before it went is not sent
        if members:
            task = asyncio.get_running_loop().create_task(self._run(batch, members))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch, members: list[_Member]) -> None:
        try:
            if len(members) == 1:  # nobody joined: its own request, untouched
                await self._alone(batch.path, members[0])
                return
            body = _encode({**batch.head, "input": msgspec.Raw(b"[" + b",".join(i for m in members for i in m.items)
                                                                + b"]")})
            self._calls(len(members))
            try:
                reply = await self._transport.send(batch.path, body)
            except GatewayError as exc:
                if exc.code != "upstream_response_too_large":  # about the upstream: each its own copy of it
                    for m in members:
                        _give(m, exc=copy.copy(exc))
                    return
            else:
                if reply.status == 200:
                    parts = _split(reply.body, members)
                    if parts is not None:
                        for m, part in zip(members, parts):
                            _give(m, part)
                        return
                elif reply.status not in _PER_INPUT:
                    for m in members:
                        _give(m, UpstreamReply(reply.status, reply.body, reply.retry_after))
                    return
            # the answer may be about one member's input: each asks alone, and gets its own answer
            await asyncio.gather(*(self._alone(batch.path, m) for m in members if not m.future.done()))
        except BaseException as exc:  # cancelled (shutdown) or a fault of ours: no member waits for ever
            for m in members:
                if not m.future.done():
                    m.future.cancel() if isinstance(exc, asyncio.CancelledError) else m.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    async def _alone(self, path: str, member: _Member) -> None:
        self._calls(1)
        try:
            reply = await self._transport.send(path, member.body)
        except GatewayError as exc:
            _give(member, exc=exc)
        else:
            _give(member, reply)


def _give(member: _Member, reply: UpstreamReply | None = None, exc: BaseException | None = None) -> None:
    f = member.future
    if f.done():  # its caller left
        return
    if exc is not None:
        f.set_exception(exc)
    else:
        f.set_result(reply)


def _parse(body: bytes) -> tuple[dict[str, msgspec.Raw], str, list[bytes]] | None:
    """The request's other fields, the kind of its input (``text`` or ``tokens``) and each input as JSON; None
    when it is not an embeddings body this can combine (it then goes alone, as it came)."""
    try:
        head = _fields.decode(body)
        raw = head.pop("input", None)
        if raw is None:
            return None
        data = bytes(raw)
        if data[:1] == b'"':
            return head, "text", [data]
        items = [bytes(i) for i in _items.decode(data)]
    except (msgspec.DecodeError, ValueError):
        return None
    if not items:
        return None
    first = items[0][:1]
    if first == b'"':
        return head, "text", items
    if first == b"[":
        return head, "tokens", items
    return head, "tokens", [data]  # one array of token ids: one input


def _split(body: bytes, members: Sequence[_Member]) -> list[BatchedReply] | None:
    """Each member's answer out of the batch's, or None when the answer does not hold one vector per input."""
    try:
        top = _fields.decode(body)
        data = _data.decode(top["data"])
        usage = _usage.decode(top["usage"]) if "usage" in top else None
    except (msgspec.DecodeError, KeyError, ValueError):
        return None
    data.sort(key=lambda d: d.index)
    if [d.index for d in data] != list(range(sum(len(m.items) for m in members))):
        return None
    if usage is None:  # no usage reported: each caller's is estimated, as it would be alone
        counts, source = None, ""
    else:
        counts, exact = shares(max(0, usage.prompt_tokens), [m.weight for m in members], [len(m.items) for m in members])
        source = "batched" if exact else "apportioned"
    out: list[BatchedReply] = []
    at = 0
    for j, m in enumerate(members):
        vectors = b",".join(b'{"object":"embedding","index":%d,"embedding":%s}' % (i, bytes(d.embedding))
                            for i, d in enumerate(data[at:at + len(m.items)]))
        at += len(m.items)
        fields = {**top, "data": msgspec.Raw(b"[" + vectors + b"]")}
        if counts is None:
            fields.pop("usage", None)
        else:
            fields["usage"] = msgspec.Raw(b'{"prompt_tokens":%d,"total_tokens":%d}' % (counts[j], counts[j]))
        out.append(BatchedReply(_encode(fields), source))
    return out


def shares(total: int, weights: Sequence[int], inputs: Sequence[int]) -> tuple[list[int], bool]:
    """The upstream's ``total`` split over the members: their own ``weights`` when these add up to it (exact,
    True); else in proportion to them (to their ``inputs`` when they count nothing), largest remainders first,
    ties to the earlier member, so the parts always add up to ``total`` (False)."""
    if sum(weights) == total:
        return list(weights), True
    w = list(weights) if sum(weights) > 0 else list(inputs)
    whole = sum(w)
    parts = [total * x // whole for x in w]
    order = sorted(range(len(w)), key=lambda i: (-(total * w[i] % whole), i))
    for i in order[:total - sum(parts)]:
        parts[i] += 1
    return parts, False


def batchers(upstreams: Sequence[Upstream], deployments: Mapping[str, Any],
             calls: Callable[[str, int], None] = lambda _u, _n: None) -> dict[Transport, EmbedBatcher]:
    """A batcher per replica of every upstream with ``embeddings_batching`` (empty: none batches); ``calls`` is
    told of each call to it (the upstream's name, the callers it carried)."""
    out: dict[Transport, EmbedBatcher] = {}
    for u in upstreams:
        if u.embeddings_batching is not None:
            for replica in deployments[u.name].replicas:
                out[replica.transport] = EmbedBatcher(replica.transport, u.embeddings_batching,
                                                      lambda n, name=u.name: calls(name, n))
    return out
