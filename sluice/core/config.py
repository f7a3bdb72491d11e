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
from .cache_config import CacheStorage
from .env_refs import expand
from .errors import ConfigError
from .policy_settings import PolicySettings
from .telemetry_config import Telemetry
from .tokenizer import load as load_tokenizer
from .lifecycle import Lifecycle
from .mcp_config import Mcp
from .types import MAX_INT
from .guardrails import Guardrails, ToolSpec

# the sections' own modules; their names are this schema's too (``from sluice.core.config import LimitRule``)
from .identity_config import (Admin, DeclaredIdentity, DeclaredTeam, FederationAlg, FederationRule,  # noqa: F401
                              IdentitySettings, Security, Tokens, TrustedIssuer)
from .limits_config import Anomaly, LimitDim, LimitRule, Limits, Price  # noqa: F401
from .routing_config import (LEGACY_VERSION, Breaker, Capacity, Compliance, DigestProbe, ExtraParams, Model,  # noqa: F401
                             ModelVersion, PlacementSettings, RegisteredModel, Resilience, RouteMatch, RouteSpec,
                             Upstream, WeightedTarget)
from .strict import Port, Seconds
from .strict import Strict as _Strict
from .tls_config import ListenerTls
from .listener_config import Serves, check_listeners


class Listener(_Strict):
    """Where one plane listens."""

    host: str = "127.0.0.1"
    port: Port = 8080
    tls: ListenerTls | None = None  # None: plain HTTP


class ControlPlaneListener(Listener):
    """The control plane's listener: port 8081 unless given, also when only its ``tls`` is (a ``control_plane:``
    block without a port once took the data plane's 8080 and clashed with it)."""

    port: Port = 8081


class DataPlaneListener(Listener):
    """A data-plane listener, on sluice's own HTTP server (asyncio protocols and llhttp).

    ``data_plane`` is one of these (unnamed: today's single listener, serving every caller) or a list of
    named ones, each serving what its ``serves`` says (``listener_config``).

    ``server: aiohttp`` selected the framework server until issue 23.21 retired it (it lacked the
    connection bound and the send timeout, and every hardening had to be done twice); a config
    that still asks for it is refused with a message that says so rather than silently moved.
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
    name: str | None = None  # a listener of a list: recorded on usage rows, metrics and decisions
    # this listener's own body limit (None: ``requests.max_body_bytes``)
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1024, le=MAX_INT)] | None = None
    serves: Serves | None = None  # None: every caller, every model its scopes allow

    def __post_init__(self) -> None:
        if self.server == "aiohttp":
            raise msgspec.ValidationError("the aiohttp data-plane server is retired: remove `server` (native is the"
                                          " only one) - at `$.data_plane.server`")


class Store(_Strict):
    """Where identities, keys and usage live: ``sqlite:///path`` or ``postgresql://...``."""

    url: str = "sqlite:///.sluice/sluice.db"


class Usage(_Strict):
    """The usage ledger writer: batched, off the request path."""

    flush_interval: Seconds = 0.25
    # records per write; none given: 5,000 on Postgres, whose server folds each batch's rollups (a batch of 500
    # spends ~80 µs of the server's CPU a row, one of 5,000 ~28 µs: bench/usage_scale.py), 500 on SQLite
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] | None = None
    queue_max: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)] = 200_000


POSTGRES_BATCH, SQLITE_BATCH = 5_000, 500


def usage_batch(cfg: Usage, store_url: str) -> int:
    """The ledger's records per write on the store at ``store_url``: the configured size, else that store's default."""
    if cfg.batch_size is not None:
        return cfg.batch_size
    return POSTGRES_BATCH if store_url.startswith("postgres") else SQLITE_BATCH


class Ledger(_Strict):
    """What the usage ledger keeps and where it leaves (sluice/store/usage_retention.py): raw rows for
    ``raw_retention_days`` whole UTC days (on Postgres a partition per day, dropped whole), rollups for
    ``rollup_retention_days``; with ``export_dir`` a day's raw rows are written there as gzip JSON lines
    with a manifest before they go, and a failed export keeps them."""

    raw_retention_days: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 30
    rollup_retention_days: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 400
    export_dir: str | None = None
    retention_interval: Seconds = 3600.0  # how often a replica tries for the lease and runs retention
    partitions_ahead: Annotated[int, msgspec.Meta(ge=1, le=366)] = 3  # Postgres: day partitions made past today


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
    # hash: a unit vector derived from the input's bytes (equal inputs alone are alike); wordllama: a small real
    # embedding model shipped in its PyPI wheel (the semantic cache's tests; the `wordllama` test dependency)
    embedder: Literal["hash", "wordllama"] = "hash"
    max_concurrency: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 0
    # Prefills run at once per replica (0 = unbounded); 1 models a GPU whose compute prefills one prompt at a time.
    prefill_concurrency: Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)] = 0
    # Continuous batching: each decode step takes decode_ms_per_token x (1 + this x other sequences decoding).
    decode_batch_slowdown: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    # Publish vLLM-shaped KV block events (stored/removed/cleared) at GET /sim/kv_events.
    kv_events: bool = False
    seed: int = 0
    # The weights digest every model reports in ``GET /v1/models`` (``digest``): what a registry version's digest is
    # checked against (routing.supply); None: no digest field
    digest: str | None = None


class Responses(_Strict):
    """The Responses API's stored responses (``store: true``): agent memory, per identity, sealed at rest."""

    retention_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 30.0  # then invisible, and purged
    max_chain: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000  # links a previous_response_id may reach back


class BatchFiles(_Strict):
    """The Batch API's files (issue 27): an uploaded file without ``expires_after``, and every output and error
    file, expires ``file_retention_days`` after it was written (OpenAI's default for batch files); one replica
    at a time purges the expired ones every ``purge_interval``."""

    file_retention_days: Annotated[float, msgspec.Meta(gt=0, le=3650)] = 30.0
    purge_interval: Seconds = 3600.0


class Config(_Strict):
    """The whole gateway configuration."""

    # one listener, or a list of named ones (issue 28 item 3): ``listeners`` gives both as a list
    data_plane: DataPlaneListener | list[DataPlaneListener] = msgspec.field(default_factory=lambda: DataPlaneListener(port=8080))
    control_plane: ControlPlaneListener = msgspec.field(default_factory=ControlPlaneListener)
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
    ledger: Ledger = msgspec.field(default_factory=Ledger)  # issue 29: retention and export of the usage ledger
    requests: RequestLimits = msgspec.field(default_factory=RequestLimits)
    logging: Logging = msgspec.field(default_factory=Logging)
    sim: Sim | None = None
    policy: PolicySettings = msgspec.field(default_factory=PolicySettings)
    audit: Audit = msgspec.field(default_factory=Audit)
    guardrails: Guardrails = msgspec.field(default_factory=Guardrails)  # issue 12: sluice.guard
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    telemetry: Telemetry = msgspec.field(default_factory=Telemetry)
    lifecycle: Lifecycle = msgspec.field(default_factory=Lifecycle)
    responses: Responses = msgspec.field(default_factory=Responses)  # issue 24: sluice.memory
    mcp: Mcp = msgspec.field(default_factory=Mcp)  # issue 25: sluice.mcp
    cache: CacheStorage = msgspec.field(default_factory=CacheStorage)  # issue 27: where cached answers live
    batches: BatchFiles = msgspec.field(default_factory=BatchFiles)  # issue 27: batch files' expiry

    @property
    def listeners(self) -> list[DataPlaneListener]:
        """The data-plane listeners, the single-object form as a list of one."""
        return self.data_plane if isinstance(self.data_plane, list) else [self.data_plane]

    def __post_init__(self) -> None:
        check_listeners(self)
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
    probed = {u.name for u in config.upstreams if u.digest_probe is not None}
    for i, m in enumerate(config.registry):
        if m.name in legacy:
            raise msgspec.ValidationError(f"{m.name!r} is already a model in `models` - at `$.registry[{i}].name`")
        _check_unique(f"registry[{i}].versions", [v.version for v in m.versions])
        for j, v in enumerate(m.versions):
            if v.upstream not in upstreams:
                raise msgspec.ValidationError(
                    f"upstream {v.upstream!r} is not declared in `upstreams` - at `$.registry[{i}].versions[{j}].upstream`")
            if v.digest is not None and v.upstream not in probed:
                raise msgspec.ValidationError(
                    f"a digest is checked against what the upstream reports, and upstream {v.upstream!r} has no "
                    f"digest_probe - at `$.registry[{i}].versions[{j}].digest`")
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


# a stdio MCP server's env: kept as written (resolved when the server starts), so the policy it seeds holds no secret
_RAW = re.compile(r"^\$\.mcp\.servers\[\d+\]\.env$")


def interpolate(value: Any, path: str = "$") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in every string, naming the field of a missing one."""
    if isinstance(value, str):
        return expand(value, path)
    if isinstance(value, dict) and _RAW.match(path):
        for k, v in value.items():  # checked now all the same: an unset variable fails the load
            interpolate(v, f"{path}.{k}")
        return dict(value)
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
