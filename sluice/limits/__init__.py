"""Usage control: rules, reservations and settlement, on a memory or Redis backend."""

from .anomaly import AnomalyGuard, Throttle
from .backend import BackendUnavailable, LimitBackend
from .checks import INPUT, OUTPUT
from .fairness import Admission, FairGate, Slot
from .estimate import ask_for, bounded_output, output_tokens, prompt_sizes, prompt_tokens, warm
from .limiter import Limiter, Reservation
from .memory import MemoryBackend
from .pricing import PriceTable

__all__ = ["INPUT", "OUTPUT", "Admission", "AnomalyGuard", "Throttle", "BackendUnavailable", "FairGate", "Slot", "LimitBackend", "Limiter", "MemoryBackend", "PriceTable", "Reservation",
           "ask_for", "bounded_output", "build_backend", "output_tokens", "prompt_sizes", "prompt_tokens",
           "warm"]


def build_backend(kind: str, url: str, timeout_s: float) -> LimitBackend:
    if kind == "redis":
        from .redis_backend import RedisBackend

        return RedisBackend(url, timeout_s)
    return MemoryBackend()
