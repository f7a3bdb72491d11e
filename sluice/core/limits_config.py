"""The config sections of usage control: limit rules, anomaly throttling, the counters' backend, prices."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .strict import Strict as _Strict
from .types import MAX_INT


LimitDim = Literal["identity", "team", "model", "route"]


class LimitRule(_Strict, kw_only=True):
    """One limit: which requests it covers (``match``), what it counts them by (``per``), and the caps.

    ``per: [identity]`` gives every identity its own counters; ``per: [team, model]`` every
    team-and-model pair; ``per: []`` one counter for everything the rule matches.
    """

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    per: list[LimitDim] = msgspec.field(default_factory=lambda: ["identity"])
    match: dict[LimitDim, str] = msgspec.field(default_factory=dict)
    requests_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    input_tokens_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    output_tokens_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    concurrent_requests: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    spend_per_day: Annotated[float, msgspec.Meta(gt=0)] | None = None
    spend_per_month: Annotated[float, msgspec.Meta(gt=0)] | None = None


class Anomaly(_Strict):
    """Per-identity spike detection: token spend in a window against the identity's own baseline."""

    window_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    baseline_windows: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 60
    warmup_windows: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 5
    multiple: Annotated[float, msgspec.Meta(gt=1)] = 10.0
    min_tokens: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    safe_requests_per_minute: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 10
    cooldown_s: Annotated[float, msgspec.Meta(gt=0)] = 300.0


class Limits(_Strict):
    """Usage control: where counters live, what happens when they cannot be reached, the rules."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=10)] = 0.25
    on_backend_failure: Literal["closed", "open"] = "closed"
    max_tokens_cap: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 4096
    # a max_tokens above the cap: refused with a 400 naming the cap, or lowered to it
    over_cap: Literal["refuse", "clamp"] = "refuse"
    concurrency_lease_s: Annotated[float, msgspec.Meta(ge=1)] = 900.0
    key_prefix: str = "sluice:"
    rules: list[LimitRule] = msgspec.field(default_factory=list)
    anomaly: Anomaly | None = None


class Price(_Strict):
    """What a model costs, per million tokens, in the configured currency.

    ``cached_input`` prices prompt tokens read from the upstream's cache (OpenAI's ``cached_tokens``,
    Anthropic's ``cache_read_input_tokens``), ``cache_creation_input`` those written to it (Anthropic's
    ``cache_creation_input_tokens``); unset, either costs what ``input`` does.
    """

    input: Annotated[float, msgspec.Meta(ge=0)]
    output: Annotated[float, msgspec.Meta(ge=0)]
    cached_input: Annotated[float, msgspec.Meta(ge=0)] | None = None
    cache_creation_input: Annotated[float, msgspec.Meta(ge=0)] | None = None
