"""Counters one replica keeps about what it was asked and what it did, for ``GET /sim/stats``."""

from __future__ import annotations

_FIELDS = (
    "requests_total",
    "chat_requests",
    "completion_requests",
    "embedding_requests",
    "model_list_requests",
    "streams_started",
    "streams_completed",
    "streams_cut",
    "streams_stalled",
    "client_disconnects",
    "errors_injected",
    "errors_returned",
    "prompt_tokens",
    "completion_tokens",
    "prefix_cache_lookups",
    "prefix_cache_hits",
    "prefix_cache_query_tokens",
    "prefix_cache_hit_tokens",
)


class Stats:
    """Plain integer counters; ``in_flight`` is a gauge and survives a reset."""

    __slots__ = (*_FIELDS, "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        """Zero every counter, leaving the in-flight gauge as it is."""
        for name in _FIELDS:
            setattr(self, name, 0)

    def snapshot(self) -> dict[str, int]:
        """Every counter and the in-flight gauge, by name."""
        out = {name: getattr(self, name) for name in _FIELDS}
        out["in_flight"] = self.in_flight
        return out
