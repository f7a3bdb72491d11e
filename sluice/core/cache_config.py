"""The config schema of the response cache (issue 27): where entries live (``cache:`` of the config file)
and which requests are cached (the ``cache`` policy section, versioned like every other section).

A request meets the first rule set whose ``match`` fits it; one that fits none is not cached.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .guardrails import GuardMatch
from .strict import Strict as _Strict
from .types import MAX_INT

CacheMode = Literal["off", "exact", "semantic"]
CacheScope = Literal["identity", "team", "global"]


class CacheMatch(GuardMatch):
    """Which requests a rule set covers (a guardrail rule set's match, and routes); an empty list matches
    anything. Models are the names callers use."""

    routes: list[str] = msgspec.field(default_factory=list)


class CacheRule(_Strict):
    """One rule set: what it caches, for how long, shared how widely, and what a hit costs."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    match: CacheMatch = msgspec.field(default_factory=CacheMatch)
    mode: CacheMode = "exact"
    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=30 * 86400)] = 300.0
    # who shares an entry: the identity that made it, its team, or everyone (global needs a second operator)
    scope: CacheScope = "identity"
    max_entry_bytes: Annotated[int, msgspec.Meta(ge=1, le=64 * 1024 * 1024)] = 256 * 1024
    tool_calls: bool = False  # replies that call tools are cached too
    sampled: bool = False  # requests with a non-zero temperature (or top_p below 1) are cached too
    several: bool = False  # requests with n > 1 are cached too
    charge: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # what a hit costs, in the configured currency
    count_tokens: bool = False  # a hit counts the tokens of the answer against token limits (it always counts the request)
    # mode `semantic` (issue 27, item 2): the last user message is embedded with this model, through the pipeline as
    # the caller (its scopes, limits and usage), and an entry whose earlier turns, system prompt, model version and
    # parameters are identical and whose last user message is at least this similar (cosine) serves the request
    embeddings_model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    # 0.96, not the 0.95: on tests/cache/semantic_pairs.py, 0.95 served "turn on notifications" the answer
    # to "turn off notifications" (cosine 0.957; precision 0.989); 0.96 served no near-miss (bench/README.md)
    threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.96
    max_user_turns: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1  # longer conversations are looked up exactly only
    # the embedding's bound: an embeddings upstream slower than this leaves a plain miss, never a held request
    embeddings_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 1.0

    def __post_init__(self) -> None:
        if self.mode == "semantic" and self.embeddings_model is None:
            raise msgspec.ValidationError("mode `semantic` needs `embeddings_model`: the model that embeds the last "
                                          "user message")


class CacheSection(_Strict):
    """``cache`` policy section: rule sets, first match wins; none at all caches nothing."""

    rules: list[CacheRule] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise msgspec.ValidationError("cache rule names must be unique")


class CacheStorage(_Strict):
    """``cache:`` of the config file: where entries live. Memory (each process its own, bounded by bytes,
    least recently used out first) or Redis (shared by replicas; a dead Redis is a miss within the timeout)."""

    backend: Literal["memory", "redis"] = "memory"
    max_bytes: Annotated[int, msgspec.Meta(ge=1024, le=MAX_INT * 64)] = 64 * 1024 * 1024
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.1
    # after a Redis failure, requests skip the cache (bypass) this long before it is tried again
    redis_retry_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 2.0
    key_prefix: str = "sluice:cache:"
    # the semantic index (mode `semantic`): vectors held in this process at most (on Redis: the shared stream's length)
    max_vectors: Annotated[int, msgspec.Meta(ge=1, le=10_000_000)] = 100_000
    rules: list[CacheRule] = msgspec.field(default_factory=list)  # seed the policy's `cache` section, as limits.rules do
