"""The simulated model backend: speaks vLLM's OpenAI-compatible API with deterministic text,
a latency model (prefill, decode, a per-replica prefix KV cache, bounded concurrency) and
faults injected at runtime, so the gateway can be tested and benchmarked without a GPU.
"""

from __future__ import annotations

from .server import build_app, run, serve

__all__ = ["build_app", "run", "serve"]
