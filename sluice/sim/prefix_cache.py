"""One replica's prefix KV cache, block by block, the way vLLM's automatic prefix caching works."""

from __future__ import annotations

import hashlib
import zlib
from collections import OrderedDict
from collections.abc import Sequence

from .kv_events import AllBlocksCleared, BlockRemoved, BlockStored, EventLog


class PrefixCache:
    """LRU of full prompt blocks, each keyed by a chain hash of every token up to its end.

    With an ``EventLog`` it publishes vLLM-shaped stored/removed/cleared events, and its block
    hashes are stable across processes (BLAKE2b instead of Python's per-process ``hash``) so
    an outside index can recompute them.
    """

    __slots__ = ("_blocks", "_block_tokens", "_capacity", "events")

    def __init__(self, capacity_blocks: int, block_tokens: int, events: EventLog | None = None) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity_blocks
        self._block_tokens = block_tokens
        self.events = events

    def __len__(self) -> int:
        return len(self._blocks)

    def lookup_and_insert(self, tokens: Sequence[str]) -> int:
        """Count the prompt tokens already cached, then cache the prompt's blocks; returns the count."""
        if self._capacity <= 0:
            return 0
        size = self._block_tokens
        # Like vLLM, the last prompt token is always computed (its logits start decoding),
        # so only blocks that end before it can be hits.
        full = (len(tokens) - 1) // size if tokens else 0
        blocks = self._blocks
        events = self.events
        stored: list[int] = []
        removed: list[int] = []
        first_new = 0
        first_parent: int | None = None
        parent = 0
        cached = 0
        missed = False
        for i in range(full):
            # A block's key covers the whole prefix, so equal blocks after different prefixes differ.
            block = tokens[i * size : (i + 1) * size]
            key = hash((parent, *block)) if events is None else stable_block_hash(parent, block)
            if not missed and key in blocks:
                blocks.move_to_end(key)
                cached += size
                parent = key
                continue
            if not missed:
                missed, first_new = True, i
                first_parent = parent if i else None
            blocks[key] = None
            stored.append(key)
            if len(blocks) > self._capacity:
                old, _ = blocks.popitem(last=False)
                removed.append(old)
            parent = key
        if events is not None and stored:
            token_ids = [token_id(t) for t in tokens[first_new * size : (first_new + len(stored)) * size]]
            batch: list[BlockStored | BlockRemoved | AllBlocksCleared] = []
            if removed:
                batch.append(BlockRemoved(block_hashes=removed))
            batch.append(BlockStored(block_hashes=stored, parent_block_hash=first_parent, token_ids=token_ids, block_size=size))
            events.publish(batch)
        return cached

    def clear(self) -> None:
        """Drop every cached block (vLLM's ``/reset_prefix_cache``)."""
        self._blocks.clear()
        if self.events is not None:
            self.events.publish([AllBlocksCleared()])


def stable_block_hash(parent: int, block: Sequence[str]) -> int:
    """A block's hash from its parent's and its tokens, the same in every process."""
    h = hashlib.blake2b(parent.to_bytes(8, "little") + "\x1f".join(block).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little")


def token_id(token: str) -> int:
    """A stable integer id for one of the sim's word tokens (vLLM's events carry token ids)."""
    return zlib.crc32(token.encode())
