"""One replica's prefix KV cache, block by block, the way vLLM's automatic prefix caching works."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """LRU of full prompt blocks, each keyed by a chain hash of every token up to its end."""

    __slots__ = ("_blocks", "_block_tokens", "_capacity")

    def __init__(self, capacity_blocks: int, block_tokens: int) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._capacity = capacity_blocks
        self._block_tokens = block_tokens

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
        parent = 0
        cached = 0
        missed = False
        for i in range(full):
            # A block's key covers the whole prefix, so equal blocks after different prefixes differ.
            parent = hash((parent, *tokens[i * size : (i + 1) * size]))
            if not missed and parent in blocks:
                blocks.move_to_end(parent)
                cached += size
                continue
            missed = True
            blocks[parent] = None
            if len(blocks) > self._capacity:
                blocks.popitem(last=False)
        return cached

    def clear(self) -> None:
        """Drop every cached block (vLLM's ``/reset_prefix_cache``)."""
        self._blocks.clear()
