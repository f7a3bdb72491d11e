"""KV block events in the shape vLLM publishes them (``vllm.distributed.kv_events``), so a router
can keep a precise index of which replica holds which prefix block.

vLLM sends msgpack-encoded ``KVEventBatch`` frames over ZMQ PUB with a sequence number and a
replay socket; the sim keeps the same structs (tagged, array-like) but serves them as JSON at
``GET /sim/kv_events?after=SEQ`` from a bounded buffer, which needs no ZMQ and replays the same way.
"""

from __future__ import annotations

import time
from collections import deque

import msgspec

MEDIUM_GPU = "GPU"


class KVCacheEvent(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, tag=True):
    """Base of the block events; the tag is the class name, as vLLM's."""


class BlockStored(KVCacheEvent):
    """A run of consecutive prompt blocks became cached; the first one's parent is ``parent_block_hash``."""

    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None = None
    medium: str | None = MEDIUM_GPU


class BlockRemoved(KVCacheEvent):
    """Blocks were evicted."""

    block_hashes: list[int]
    medium: str | None = MEDIUM_GPU


class AllBlocksCleared(KVCacheEvent):
    """The whole cache was dropped (``/reset_prefix_cache``, a restart)."""


class KVEventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    """The events of one scheduling step, with the time they happened."""

    ts: float
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


class SequencedBatch(msgspec.Struct, gc=False):
    """A batch and its sequence number (ZMQ's second frame in vLLM)."""

    seq: int
    batch: KVEventBatch


class EventLog:
    """The last ``capacity`` batches; readers poll with the last sequence number they saw."""

    __slots__ = ("_batches", "_next")

    def __init__(self, capacity: int = 10000) -> None:
        self._batches: deque[SequencedBatch] = deque(maxlen=capacity)
        self._next = 0

    def publish(self, events: list[BlockStored | BlockRemoved | AllBlocksCleared]) -> None:
        """Append one batch of events, if there are any."""
        if events:
            self._batches.append(SequencedBatch(seq=self._next, batch=KVEventBatch(ts=time.time(), events=events)))
            self._next += 1

    def after(self, seq: int) -> list[SequencedBatch]:
        """Batches with a sequence number above ``seq`` still in the buffer (-1 for all)."""
        return [b for b in self._batches if b.seq > seq]

    @property
    def next_seq(self) -> int:
        """The sequence number the next batch will carry."""
        return self._next
