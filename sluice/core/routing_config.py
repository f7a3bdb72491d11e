"""The config sections of upstreams, models, the registry, routes and resilience."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .limits_config import Price
from .strict import Seconds
from .strict import Strict as _Strict
from .types import MAX_INT, Environment

_ParamName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ExtraParams = Literal["openai", "vllm"] | list[_ParamName]


class PlacementSettings(_Strict):
    """How an upstream with several replicas places requests on them (``routing.placement``)."""

    policy: Literal["least_outstanding", "prefix_affinity", "round_robin"] = "least_outstanding"
    # Characters per hashed block (the inference extension's default).
    block_chars: Annotated[int, msgspec.Meta(ge=8, le=4096)] = 64
    # At most this many leading blocks are hashed: bounds the decision's cost on huge prompts.
    max_blocks: Annotated[int, msgspec.Meta(ge=1, le=65536)] = 256
    # Block hashes remembered per replica; size it near the replica's KV cache (tokens x ~4 chars / block_chars).
    index_blocks: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 31250
    # Affinity may pick a replica only while its in-flight count is within this slack of the least
    # loaded one: slack = max(balance_abs, (balance_rel - 1) x least).
    balance_abs: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 6
    balance_rel: Annotated[float, msgspec.Meta(ge=1.0)] = 1.25
    # Fewer matching blocks than this count as no match (least outstanding decides).
    min_match_blocks: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 1


# A field path into a JSON answer: keys joined by dots, ``[N]`` for a list's Nth item, ``[key=value]`` for the first
# item whose ``key`` is ``value``; ``{model}`` stands for the version's upstream model (``data[id={model}].digest``).
_FieldPath = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+(\[[^\]\[]+\])*(\.[A-Za-z0-9_-]+(\[[^\]\[]+\])*)*$",
                                         max_length=512)]


class DigestProbe(_Strict):
    """Where an OpenAI-compatible backend says which weights it serves: a JSON field of a GET on its server
    (``path`` from the server's root, not under base_url; ``{model}`` may appear in either)."""

    path: Annotated[str, msgspec.Meta(pattern=r"^/[^\s]*$", max_length=512)] = "/v1/models"
    field: _FieldPath = "data[id={model}].digest"


class EmbeddingsBatching(_Strict):
    """Embeddings micro-batching on one upstream (``upstream.embed_batch``): concurrent embeddings requests for the
    same upstream model and parameters, arriving within ``batch_window_ms`` of the first, go upstream as one call."""

    batch_window_ms: Annotated[float, msgspec.Meta(ge=0, le=1000)] = 2.0
    # a batch goes as soon as it holds this many inputs (OpenAI takes 2,048 in one request) ...
    max_batch_inputs: Annotated[int, msgspec.Meta(ge=1, le=2048)] = 2048
    # ... or this many prompt tokens as the gateway counts them (OpenAI takes 300,000 in one request)
    max_batch_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 300_000


class Upstream(_Strict):
    """One model backend: OpenAI's wire protocol (vLLM, Ollama, llama.cpp, OpenAI), Anthropic's Messages API, or
    the OpenAI Responses API served by the backend itself (vLLM, OpenAI)."""

    name: str
    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    api_key: str | None = None
    # The wire it speaks: ``openai`` (chat completions, embeddings; the key sent as a bearer token),
    # ``anthropic`` (``/messages`` and ``/messages/count_tokens`` under base_url; the key sent as ``x-api-key``):
    # Messages requests then go to it natively (pipeline.native), or ``responses`` (``/responses`` under base_url,
    # stateless: the gateway sends each chain whole; the key a bearer token): Responses requests then go to it
    # natively (pipeline.native_responses). Other APIs' requests to either are refused (``wrong_api``).
    api: Literal["openai", "anthropic", "responses"] = "openai"
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 120.0
    total_timeout: Seconds = 600.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 512
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # Request parameters beyond OpenAI's passed through to this upstream: "openai" (none, the
    # default), "vllm", or a list of set names and parameter names. A model may override it.
    extra_params: ExtraParams | None = None
    # ``auto`` is the native client (pooled connections over llhttp); ``aiohttp`` its framework client.
    client: Literal["auto", "aiohttp", "native"] = "auto"
    pool_timeout: Seconds = 10.0
    idle_timeout: Seconds = 30.0
    # The bulkhead (routing.bulkhead): requests in flight to this upstream at once, over all its replicas
    # (None: max_connections per replica), the line of requests waiting for one of those places, and
    # how long one waits (None: pool_timeout). A full line, or a wait past its deadline, is a 503
    # ``upstream_busy`` with Retry-After at once: a stalled backend holds no more than these of the
    # gateway's connections and memory, whatever its callers send.
    max_in_flight: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    max_queue: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 1024
    queue_timeout: Seconds | None = None
    tls_ca_file: str | None = None
    # mTLS to this upstream: the client certificate chain and key (PEM) sluice presents to it
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # The largest whole (non-streamed) answer read from this upstream; a bigger one is a 502
    # (upstream_response_too_large) instead of memory. 256 MiB holds a float embeddings batch of
    # 2,048 inputs at 3,072 dimensions about three times over.
    max_response_bytes: Annotated[int, msgspec.Meta(ge=1024, le=MAX_INT)] = 256 * 1024 * 1024
    # More base URLs of the same deployment (replicas); requests are placed across base_url and these.
    replicas: list[Annotated[str, msgspec.Meta(pattern=r"^https?://")]] = msgspec.field(default_factory=list)
    # Link-local and cloud-metadata addresses are refused unless this is set (see routing.egress).
    allow_link_local: bool = False
    # How requests are placed on base_url and the replicas.
    placement: PlacementSettings = msgspec.field(default_factory=PlacementSettings)
    # How a registry version's ``digest`` is checked on this upstream's replicas (routing.supply): ``ollama``
    # (the model's ``digest`` in ``GET /api/tags``) or a probe; None: versions here may not carry a digest.
    digest_probe: Literal["ollama"] | DigestProbe | None = None
    # Embeddings micro-batching (issue 27); None (the default): every embeddings request goes upstream alone
    embeddings_batching: EmbeddingsBatching | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise msgspec.ValidationError(f"upstream {self.name!r}: give both tls_cert_file and tls_key_file, or neither")
        if self.embeddings_batching is not None and self.api != "openai":
            raise msgspec.ValidationError(f"upstream {self.name!r}: embeddings_batching needs api: openai (the only "
                                          "wire that carries embeddings)")

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url, *self.replicas]

    @property
    def in_flight_bound(self) -> int:
        """Requests in flight to this upstream at once: ``max_in_flight``, or every replica's pool full."""
        return self.max_in_flight or self.max_connections * (1 + len(self.replicas))


class Capacity(_Strict):
    """A model's shared capacity: requests in flight at once, and a fair queue in front of it."""

    concurrency: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    queue: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 100
    queue_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 30.0


class Model(_Strict):
    """A model name callers use, mapped to an upstream and that upstream's model name."""

    name: str
    upstream: str
    upstream_model: str | None = None
    environment: Environment | None = None
    capacity: Capacity | None = None
    extra_params: ExtraParams | None = None  # None: the upstream's
    # A local tokenizer.json (Hugging Face tokenizers), read once at start: prompt estimates count with it
    tokenizer: str | None = None

    @property
    def target_model(self) -> str:
        return self.upstream_model or self.name


_Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/-]{1,128}$")]


LEGACY_VERSION = "default"  # the one version of a model declared under `models:`


class ModelVersion(_Strict, kw_only=True):
    """One version of a registered model: where it runs, what it holds, what it costs, whether it may serve."""

    version: _Name
    upstream: str
    upstream_model: str | None = None
    context_window: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    price: Price | None = None
    # The weights the backend must report (routing.supply; ``sha256:`` and case are ignored); None: not checked
    digest: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    approved: bool = False
    environment: Environment | None = None  # only callers of this environment; None: any
    region: str | None = None
    tier: str | None = None


class RegisteredModel(_Strict, kw_only=True):
    """A model of the registry and its versions; a target names one as ``model@version``."""

    name: _Name
    versions: Annotated[list[ModelVersion], msgspec.Meta(min_length=1)]


class RouteMatch(_Strict):
    """What a request must carry for a route to take it; an empty match takes everything (the default)."""

    models: list[str] = msgspec.field(default_factory=list)  # requested aliases
    identities: list[str] = msgspec.field(default_factory=list)  # identity names
    teams: list[str] = msgspec.field(default_factory=list)
    environment: Environment | None = None
    tags: list[str] = msgspec.field(default_factory=list)  # all of them (x-sluice-tags or metadata.tags)
    task: list[str] = msgspec.field(default_factory=list)  # x-sluice-task or metadata.task
    min_prompt_tokens: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] | None = None
    max_prompt_tokens: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] | None = None
    region: list[str] = msgspec.field(default_factory=list)  # x-sluice-region or metadata.region
    tier: list[str] = msgspec.field(default_factory=list)  # x-sluice-tier or metadata.tier


class WeightedTarget(_Strict):
    """A registry version (``model@version``) and its share of the route's traffic."""

    target: str
    weight: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1


class Compliance(_Strict):
    """Targets (and fallbacks) a route may use: only versions in this region and tier."""

    region: str | None = None
    tier: str | None = None


class RouteSpec(_Strict, kw_only=True):
    """One policy route: a match, weighted targets, ordered fallbacks, a compliance boundary."""

    name: _Name
    match: RouteMatch = msgspec.field(default_factory=RouteMatch)
    targets: Annotated[list[WeightedTarget], msgspec.Meta(min_length=1)]
    fallbacks: list[str] = msgspec.field(default_factory=list)
    sticky: bool = False  # one identity always lands on the same target
    retries: Annotated[int, msgspec.Meta(ge=0, le=5)] = 0  # more attempts on the chosen target
    compliance: Compliance | None = None


class Breaker(_Strict):
    """Passive circuit breaker per target: open after ``failures`` within ``window_s``, probe after ``open_s``."""

    failures: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 5
    window_s: Seconds = 10.0
    open_s: Seconds = 5.0


class Resilience(_Strict):
    """Attempts, backoff, breakers, health checks and stream keepalive, for every route."""

    max_attempts: Annotated[int, msgspec.Meta(ge=1, le=10)] = 3  # retries + fallbacks, per request
    backoff_ms: Annotated[float, msgspec.Meta(ge=0)] = 50.0
    backoff_max_ms: Annotated[float, msgspec.Meta(ge=0)] = 1000.0
    breaker: Breaker = msgspec.field(default_factory=Breaker)
    health_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # 0: no active checks
    keepalive_s: Annotated[float, msgspec.Meta(ge=0)] = 15.0  # 0: no SSE keepalive comments
    decisions_kept: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000
    sync_interval_s: Seconds = 1.0  # how often a replica checks the store for routing changes
