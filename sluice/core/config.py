"""The one typed configuration schema: YAML file, ``${ENV}`` interpolation, validation, JSON Schema.

Errors name the field (as a ``$.path``) and the reason, and start-up stops on the first one.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from .audit_settings import Audit
from .errors import ConfigError
from .policy_settings import PolicySettings
from .telemetry_config import Telemetry
from .tokenizer import load as load_tokenizer
from .lifecycle import Lifecycle
from .types import MAX_INT, Environment, Role
from .guardrails import Guardrails, ToolSpec

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]

Seconds = Annotated[float, msgspec.Meta(gt=0)]


class _Strict(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Base for config sections: unknown keys are an error, not a silent typo."""


class Listener(_Strict):
    """Where one plane listens."""

    host: str = "127.0.0.1"
    port: Port = 8080


_ParamName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
ExtraParams = Literal["openai", "vllm"] | list[_ParamName]


class DataPlaneListener(Listener):
    """The public listener, and which HTTP server carries it.

    ``native`` (the default) is sluice's own server (asyncio protocols and llhttp); ``aiohttp``
    the framework one, still selectable. The timeouts and header limits apply to the native server.
    """

    server: Literal["aiohttp", "native"] = "native"
    keepalive_timeout: Seconds = 75.0
    header_timeout: Seconds = 10.0
    body_timeout: Seconds = 60.0
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=MAX_INT)] = 65536
    max_header_field_bytes: Annotated[int, msgspec.Meta(ge=256, le=MAX_INT)] = 16384
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=MAX_INT)] = 100
    shutdown_timeout: Seconds = 10.0
    # A client whose socket takes none of an answer's bytes for this long is cut (nginx's
    # send_timeout): a reader that stopped cannot hold its stream, upstream and limits for ever.
    send_timeout: Seconds = 60.0
    # Client connections at once; past it a new one gets 503 and a close. None: half the process's
    # open-file limit, the other half left to upstream connections, the control plane and the store.
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None


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


class Upstream(_Strict):
    """One model backend speaking the OpenAI wire protocol (vLLM, Ollama, llama.cpp, OpenAI)."""

    name: str
    base_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")]
    api_key: str | None = None
    connect_timeout: Seconds = 5.0
    read_timeout: Seconds = 120.0
    total_timeout: Seconds = 600.0
    max_connections: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 512
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    # Request parameters beyond OpenAI's passed through to this upstream: "openai" (none, the
    # default), "vllm", or a list of set names and parameter names. A model may override it.
    extra_params: ExtraParams | None = None
    # ``auto`` follows ``data_plane.server``: the native client with the native server.
    client: Literal["auto", "aiohttp", "native"] = "auto"
    pool_timeout: Seconds = 10.0
    idle_timeout: Seconds = 30.0
    tls_ca_file: str | None = None
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

    @property
    def base_urls(self) -> list[str]:
        return [self.base_url, *self.replicas]


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
    digest: str | None = None  # weights hash or the upstream-reported identifier
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


class DeclaredIdentity(_Strict):
    """An identity declared in the file (GitOps); its keys usually come from ``${ENV}``."""

    name: str
    owner: str
    environment: Environment = "dev"
    models: list[str] = msgspec.field(default_factory=list)
    keys: list[str] = msgspec.field(default_factory=list)
    expires_at: float | None = None
    team: str | None = None
    roles: list[Role] = msgspec.field(default_factory=lambda: ["invoker"])


class DeclaredTeam(_Strict):
    """A team declared in the file."""

    name: str
    owner: str


class Admin(_Strict):
    """Break-glass control-plane credentials from the file: they hold every role.

    Day to day, give people and automation identities with narrow roles instead.
    """

    keys: list[str] = msgspec.field(default_factory=list)


class Security(_Strict):
    """Server secrets. The pepper keys the HMAC under which API keys are stored."""

    pepper: str | None = None
    pepper_file: str = ".sluice/pepper"
    default_key_ttl_days: Annotated[float, msgspec.Meta(gt=0)] = 90.0
    max_key_ttl_days: Annotated[float, msgspec.Meta(gt=0)] = 365.0


class Tokens(_Strict):
    """Short-lived access tokens minted by ``POST /v1/token`` (RFC 8693 token exchange)."""

    issuer: str = "sluice"
    audience: str = "sluice"
    default_ttl_s: Annotated[float, msgspec.Meta(ge=1)] = 900.0
    max_ttl_s: Annotated[float, msgspec.Meta(ge=1, le=86400)] = 3600.0
    signing_key_rotation_s: Annotated[float, msgspec.Meta(ge=60)] = 86400.0
    # verified tokens kept so a repeat costs a lookup, not a signature check; least recently used go first
    cache_entries: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000

    def __post_init__(self) -> None:
        if self.default_ttl_s > self.max_ttl_s:
            raise msgspec.ValidationError("default_ttl_s must not exceed max_ttl_s - at `$.tokens.default_ttl_s`")


FederationAlg = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"]


class IdentitySettings(_Strict):
    """How a replica keeps its credentials current, and how credentials are guarded against abuse."""

    # how often the identity-state version is read (Postgres also pushes changes at once)
    poll_interval_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 0.5
    # not ready (/readyz 503) after this long without confirming the registry is current
    max_staleness_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    # per replica, per source address and per identity: token exchanges allowed per minute (0: unlimited)
    token_requests_per_minute: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 600
    token_requests_per_minute_per_identity: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 300
    # per replica and source address: failed authentications per minute before 429 (0: unlimited)
    auth_failures_per_minute: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 1200


class FederationRule(_Strict):
    """Claims (exact or glob values) that map a workload token to one sluice identity."""

    match: Annotated[dict[str, str], msgspec.Meta(min_length=1)]
    identity: str


class TrustedIssuer(_Strict, kw_only=True):
    """An external token issuer whose workload tokens sluice accepts in exchange for its own."""

    name: str
    issuer: str
    audience: str
    jwks_url: Annotated[str, msgspec.Meta(pattern=r"^https?://")] | None = None
    jwks_file: str | None = None
    algorithms: Annotated[list[FederationAlg], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["RS256", "ES256"])
    rules: Annotated[list[FederationRule], msgspec.Meta(min_length=1)]
    leeway_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    jwks_refresh_s: Annotated[float, msgspec.Meta(ge=1)] = 300.0
    # a jwks_url must be https unless it is on loopback or this is set
    allow_insecure_http: bool = False

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise msgspec.ValidationError(f"federation issuer {self.name!r}: give exactly one of jwks_url or jwks_file")
        if self.jwks_url is not None and not self.allow_insecure_http and not _secure_url(self.jwks_url):
            # a key set fetched in clear text can be swapped on the way: then anyone can mint workload tokens
            raise msgspec.ValidationError(f"federation issuer {self.name!r}: jwks_url must use https (plain http only on"
                                          " loopback, or with allow_insecure_http: true)")


def _secure_url(url: str) -> bool:
    """https, or plain http to a loopback address (nothing leaves the machine)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
    """What a model costs, per million tokens, in the configured currency."""

    input: Annotated[float, msgspec.Meta(ge=0)]
    output: Annotated[float, msgspec.Meta(ge=0)]
    cached_input: Annotated[float, msgspec.Meta(ge=0)] | None = None


class Store(_Strict):
    """Where identities, keys and usage live: ``sqlite:///path`` or ``postgresql://...``."""

    url: str = "sqlite:///.sluice/sluice.db"


class Usage(_Strict):
    """The usage ledger writer: batched, off the request path."""

    flush_interval: Seconds = 0.25
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 500
    queue_max: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 200_000


class RequestLimits(_Strict):
    """Guards on what a request may be, before any parsing work is spent on it."""

    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=MAX_INT)] = 4 * 1024 * 1024
    max_json_depth: Annotated[int, msgspec.Meta(ge=2, le=256)] = 32


class Logging(_Strict):
    """Structured logs; secrets are masked before anything is written."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    access_log: bool = False


class Sim(_Strict):
    """The simulated backend: deterministic text, a latency model, a prefix cache, faults."""

    host: str = "127.0.0.1"
    port: Port = 0
    models: list[str] = msgspec.field(default_factory=lambda: ["sim-small", "sim-embed"])
    prefill_ms_per_token: Annotated[float, msgspec.Meta(ge=0)] = 0.05
    decode_ms_per_token: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    base_latency_ms: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    default_max_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 64
    prefix_cache_blocks: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 4096
    block_tokens: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 16
    embedding_dimensions: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 64
    max_concurrency: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 0
    # Prefills run at once per replica (0 = unbounded); 1 models a GPU whose compute prefills one prompt at a time.
    prefill_concurrency: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 0
    # Continuous batching: each decode step takes decode_ms_per_token x (1 + this x other sequences decoding).
    decode_batch_slowdown: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Publish vLLM-shaped KV block events (stored/removed/cleared) at GET /sim/kv_events.
    kv_events: bool = False
    seed: int = 0


class Config(_Strict):
    """The whole gateway configuration."""

    data_plane: DataPlaneListener = msgspec.field(default_factory=lambda: DataPlaneListener(port=8080))
    control_plane: Listener = msgspec.field(default_factory=lambda: Listener(port=8081))
    upstreams: list[Upstream] = msgspec.field(default_factory=list)
    models: list[Model] = msgspec.field(default_factory=list)
    registry: list[RegisteredModel] = msgspec.field(default_factory=list)
    routes: list[RouteSpec] = msgspec.field(default_factory=list)
    resilience: Resilience = msgspec.field(default_factory=Resilience)
    identities: list[DeclaredIdentity] = msgspec.field(default_factory=list)
    teams: list[DeclaredTeam] = msgspec.field(default_factory=list)
    tokens: Tokens = msgspec.field(default_factory=Tokens)
    identity: IdentitySettings = msgspec.field(default_factory=IdentitySettings)
    limits: Limits = msgspec.field(default_factory=Limits)
    prices: dict[str, Price] = msgspec.field(default_factory=dict)
    currency: str = "USD"
    federation: list[TrustedIssuer] = msgspec.field(default_factory=list)
    admin: Admin = msgspec.field(default_factory=Admin)
    security: Security = msgspec.field(default_factory=Security)
    store: Store = msgspec.field(default_factory=Store)
    usage: Usage = msgspec.field(default_factory=Usage)
    requests: RequestLimits = msgspec.field(default_factory=RequestLimits)
    logging: Logging = msgspec.field(default_factory=Logging)
    sim: Sim | None = None
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    audit: Audit = msgspec.field(default_factory=Audit)
    guardrails: Guardrails = msgspec.field(default_factory=Guardrails)  # issue 12: sluice.guard
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    telemetry: Telemetry = msgspec.field(default_factory=Telemetry)
    lifecycle: Lifecycle = msgspec.field(default_factory=Lifecycle)

    def __post_init__(self) -> None:
        _check_unique("upstreams", [u.name for u in self.upstreams])
        _check_unique("models", [m.name for m in self.models])
        _check_unique("identities", [i.name for i in self.identities])
        _check_unique("teams", [t.name for t in self.teams])
        _check_unique("federation", [f.name for f in self.federation])
        _check_unique("limits.rules", [r.name for r in self.limits.rules])
        for i, rule in enumerate(self.limits.rules):
            spends = rule.spend_per_day is not None or rule.spend_per_month is not None
            unpriced = [m.name for m in self.models if m.name not in self.prices]
            if spends and unpriced and not rule.match.get("model"):
                raise msgspec.ValidationError(
                    f"a spend limit needs a price for every model it may cover; no price for {', '.join(unpriced)}"
                    f" - at `$.limits.rules[{i}]`")
        teams = {t.name for t in self.teams}
        for i, ident in enumerate(self.identities):
            if ident.team is not None and ident.team not in teams:
                raise msgspec.ValidationError(f"team {ident.team!r} is not declared in `teams` - at `$.identities[{i}].team`")
        known = {u.name for u in self.upstreams}
        _check_routing(self, known)
        for i, model in enumerate(self.models):
            if model.upstream not in known:
                raise msgspec.ValidationError(
                    f"upstream {model.upstream!r} is not declared in `upstreams` - at `$.models[{i}].upstream`"
                )
            if model.tokenizer is not None:
                try:
                    load_tokenizer(model.tokenizer)  # once per process: start-up reuses it
                except ValueError as exc:
                    raise msgspec.ValidationError(f"{exc} - at `$.models[{i}].tokenizer`") from None
        for i, ident in enumerate(self.identities):
            for j, key in enumerate(ident.keys):
                if len(key) < 20:
                    raise msgspec.ValidationError(
                        f"a key must be at least 20 characters - at `$.identities[{i}].keys[{j}]`"
                    )
        for j, key in enumerate(self.admin.keys):
            if len(key) < 20:
                raise msgspec.ValidationError(f"a key must be at least 20 characters - at `$.admin.keys[{j}]`")


def _check_routing(config: Config, upstreams: set[str]) -> None:
    """Registry versions name declared upstreams; routes name registered versions; no route is unreachable."""
    _check_unique("registry", [m.name for m in config.registry])
    _check_unique("routes", [r.name for r in config.routes])
    versions: set[str] = {f"{m.name}@{LEGACY_VERSION}" for m in config.models}
    legacy = {m.name for m in config.models}
    for i, m in enumerate(config.registry):
        if m.name in legacy:
            raise msgspec.ValidationError(f"{m.name!r} is already a model in `models` - at `$.registry[{i}].name`")
        _check_unique(f"registry[{i}].versions", [v.version for v in m.versions])
        for j, v in enumerate(m.versions):
            if v.upstream not in upstreams:
                raise msgspec.ValidationError(
                    f"upstream {v.upstream!r} is not declared in `upstreams` - at `$.registry[{i}].versions[{j}].upstream`")
            versions.add(f"{m.name}@{v.version}")
    catch_all: str | None = None
    for i, route in enumerate(config.routes):
        if catch_all is not None:
            raise msgspec.ValidationError(
                f"route {route.name!r} can never match: route {catch_all!r} before it matches everything - at `$.routes[{i}]`")
        if route.match == RouteMatch():
            catch_all = route.name
        for j, t in enumerate(route.targets):
            if t.target not in versions:
                raise msgspec.ValidationError(
                    f"target {t.target!r} is not a registry version (model@version) - at `$.routes[{i}].targets[{j}]`")
        for j, name in enumerate(route.fallbacks):
            if name not in versions:
                raise msgspec.ValidationError(
                    f"fallback {name!r} is not a registry version (model@version) - at `$.routes[{i}].fallbacks[{j}]`")


def _check_unique(section: str, names: list[str]) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise msgspec.ValidationError(f"duplicate name {name!r} - at `$.{section}[{i}].name`")
        seen.add(name)


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, path: str = "$") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string, naming the field of a missing one."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            got = os.environ.get(name)
            if got is None or got == "":
                if default is not None:
                    return default
                raise ConfigError(f"environment variable {name} is not set - at `{path}`")
            return got

        return _ENV.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def parse(raw: Any) -> Config:
    """Validate an already-loaded document (after interpolation) into a Config."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a mapping at the top level - at `$`")
    try:
        return msgspec.convert(interpolate(raw), Config, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid configuration: {exc}") from None


def load(path: str | os.PathLike[str]) -> Config:
    """Read, interpolate and validate a YAML config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
    return parse(raw)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the config file, for editors."""
    return msgspec.json.schema(Config)


def model_extra_params(config: Config) -> dict[str, ExtraParams | None]:
    """Each model's ``extra_params``, its upstream's when the model does not say."""
    upstreams = {u.name: u for u in config.upstreams}
    out = {m.name: m.extra_params if m.extra_params is not None else upstreams[m.upstream].extra_params
           for m in config.models}
    # A route's aliases take the extras of the upstream of its first target (a registry version).
    versions = {f"{m.name}@{v.version}": v.upstream for m in config.registry for v in m.versions}
    for route in config.routes:
        upstream = versions.get(route.targets[0].target)
        for alias in route.match.models:
            if alias not in out and upstream is not None:
                out[alias] = upstreams[upstream].extra_params
    return out
