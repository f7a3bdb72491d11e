"""The latency model: prefill cost per uncached prompt token, decode cost per output token
slowed by the batch it shares (continuous batching), and capacity (running slots, prefill slots)."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext

from sluice.core.config import Sim


class LatencyModel:
    """Turns token counts into delays, and bounds how many requests run and prefill at once."""

    __slots__ = ("base_s", "prefill_s", "decode_s", "batch_slowdown", "decoding", "_slots", "_prefills")

    def __init__(self, settings: Sim) -> None:
        self.base_s = settings.base_latency_ms / 1000.0
        self.prefill_s = settings.prefill_ms_per_token / 1000.0
        self.decode_s = settings.decode_ms_per_token / 1000.0
        self.batch_slowdown = settings.decode_batch_slowdown
        # Sequences past their prefill and still generating: the batch a decode step shares.
        self.decoding = 0
        # No semaphore at all when unbounded: nothing to acquire on the hot path.
        self._slots = asyncio.Semaphore(settings.max_concurrency) if settings.max_concurrency > 0 else None
        self._prefills = asyncio.Semaphore(settings.prefill_concurrency) if settings.prefill_concurrency > 0 else None

    def ttft(self, uncached_prompt_tokens: int) -> float:
        """Seconds from admission to the first output token, with no queueing."""
        return self.base_s + self.prefill_s * uncached_prompt_tokens

    def total(self, uncached_prompt_tokens: int, output_tokens: int) -> float:
        """Seconds from admission to the last output token (the first comes with prefill), alone in the batch."""
        return self.ttft(uncached_prompt_tokens) + self.decode_s * max(output_tokens - 1, 0)

    def step_s(self) -> float:
        """One decode step now: every other sequence in the batch slows it by ``batch_slowdown``."""
        others = self.decoding - 1
        if others <= 0 or not self.batch_slowdown:
            return self.decode_s
        return self.decode_s * (1.0 + self.batch_slowdown * others)

    def slot(self) -> AbstractAsyncContextManager[object]:
        """A running slot; requests beyond ``max_concurrency`` wait for one in arrival order."""
        return self._slots if self._slots is not None else nullcontext()

    @property
    def serial_prefill(self) -> bool:
        """Whether prefills queue for a prefill slot (``prefill_concurrency`` > 0)."""
        return self._prefills is not None

    def prefill_slot(self) -> AbstractAsyncContextManager[object]:
        """A prefill slot; prefills beyond ``prefill_concurrency`` wait in arrival order."""
        return self._prefills if self._prefills is not None else nullcontext()

    @property
    def waiting(self) -> int:
        """Requests queued for a running slot or a prefill slot."""
        return _waiters(self._slots) + _waiters(self._prefills)


def _waiters(sem: asyncio.Semaphore | None) -> int:
    waiters = getattr(sem, "_waiters", None) if sem is not None else None
    return len(waiters) if waiters else 0


async def pause(seconds: float) -> None:
    """Sleep on the event loop, or not at all when there is nothing to wait for."""
    if seconds > 0:
        await asyncio.sleep(seconds)
