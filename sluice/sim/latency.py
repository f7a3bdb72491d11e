"""The latency model: prefill cost per uncached prompt token, decode cost per output token, capacity."""

from __future__ import annotations

import asyncio
from contextlib import AbstractAsyncContextManager, nullcontext

from sluice.core.config import Sim


class LatencyModel:
    """Turns token counts into delays, and bounds how many requests run at once."""

    __slots__ = ("base_s", "prefill_s", "decode_s", "_slots")

    def __init__(self, settings: Sim) -> None:
        self.base_s = settings.base_latency_ms / 1000.0
        self.prefill_s = settings.prefill_ms_per_token / 1000.0
        self.decode_s = settings.decode_ms_per_token / 1000.0
        # No semaphore at all when unbounded: nothing to acquire on the hot path.
        self._slots = asyncio.Semaphore(settings.max_concurrency) if settings.max_concurrency > 0 else None

    def ttft(self, uncached_prompt_tokens: int) -> float:
        """Seconds from admission to the first output token."""
        return self.base_s + self.prefill_s * uncached_prompt_tokens

    def total(self, uncached_prompt_tokens: int, output_tokens: int) -> float:
        """Seconds from admission to the last output token (the first comes with prefill)."""
        return self.ttft(uncached_prompt_tokens) + self.decode_s * max(output_tokens - 1, 0)

    def slot(self) -> AbstractAsyncContextManager[object]:
        """A running slot; requests beyond ``max_concurrency`` wait for one in arrival order."""
        return self._slots if self._slots is not None else nullcontext()

    @property
    def waiting(self) -> int:
        """Requests queued for a slot."""
        s = self._slots
        waiters = getattr(s, "_waiters", None) if s is not None else None
        return len(waiters) if waiters else 0


async def pause(seconds: float) -> None:
    """Sleep on the event loop, or not at all when there is nothing to wait for."""
    if seconds > 0:
        await asyncio.sleep(seconds)
