"""Domain records shared by the store and the packages that own their behaviour.

They are msgspec structs so they decode, encode and compare cheaply; timestamps are
UNIX seconds as floats (UTC), which both SQLite and Postgres store without surprises.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

# The largest whole number every peer reads exactly (a JSON client, a Lua counter in Redis, a float):
# the ceiling of every integer in the config and the control plane's bodies.
MAX_INT = 2**53 - 1

Environment = Literal["dev", "prod"]
Role = Literal["invoker", "operator", "key-admin", "auditor", "owner"]
Plane = Literal["data", "control"]
ROLES: tuple[str, ...] = ("invoker", "operator", "key-admin", "auditor", "owner")


class Author(Protocol):
    """Who makes a recorded change, as the packages below ``identity`` read it (``identity.Actor`` is one)."""

    name: str
    source_ip: str | None
    roles: frozenset[str]


class Named(msgspec.Struct, frozen=True):
    """An author that is no identity: the config file, the gateway itself (``Named("config")``)."""

    name: str
    source_ip: str | None = None
    roles: frozenset[str] = frozenset()


class Team(msgspec.Struct, kw_only=True):
    """A group of identities with an owner; scopes, limits and reports can be given per team."""

    name: str
    owner: str
    created_at: float
    created_by: str = "system"


class Identity(msgspec.Struct, kw_only=True):
    """A service identity: a non-human caller with an owner and narrow model scopes."""

    id: str
    name: str
    owner: str
    environment: Environment = "dev"
    models: list[str] = msgspec.field(default_factory=list)
    created_at: float
    created_by: str = "system"
    expires_at: float | None = None
    disabled_at: float | None = None
    source: Literal["api", "config"] = "api"
    team: str | None = None
    roles: list[Role] = msgspec.field(default_factory=lambda: ["invoker"])


class ApiKey(msgspec.Struct, kw_only=True):
    """One credential of an identity. Only the HMAC of the secret is ever stored."""

    id: str
    identity_id: str
    hash: str  # hex HMAC-SHA256(pepper, secret)
    display: str  # first characters and last four, safe to show in listings
    created_at: float
    created_by: str = "system"
    expires_at: float | None = None
    revoked_at: float | None = None
    last_used_at: float | None = None
    source: Literal["api", "config"] = "api"
    plane: Plane = "data"


# The client API each data-plane endpoint speaks, as usage records and traces name it (issue 24).
API_OF = {"chat.completions": "chat", "embeddings": "embeddings", "messages": "messages",
          "messages.count_tokens": "messages", "responses": "responses", "completions": "completions"}


class UsageRecord(msgspec.Struct, kw_only=True, gc=False):
    """What one data-plane request cost and how it ended, written in batches."""

    request_id: str
    ts: float
    identity_id: str | None
    key_id: str | None
    endpoint: str
    model: str | None
    upstream: str | None
    status: int
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    upstream_ms: float | None = None
    stream: bool = False
    # reserved: sent but unanswered (a timeout), so charged what its limits reserved
    # cache: served from the response cache (issue 27), no upstream tokens; coalesced: the answer of an identical
    # request in flight at the same time, no upstream tokens either; batched: an embeddings request sent in one
    # upstream call with others (issue 27), charged its own count, which with theirs made the upstream's total;
    # apportioned: the same, its count an estimate, charged its share of the upstream's total; semantic: served
    # from the response cache by an entry whose last user message means the same (issue 27, item 2)
    usage_source: Literal["upstream", "estimated", "reserved", "none", "cache", "coalesced", "batched",
                          "apportioned", "semantic"] = "none"
    error_code: str | None = None
    # cost and chargeback (issue 13): the caller's team, the route and model version that served
    # it, prompt tokens served from the upstream's cache, and the cost in integer nano-units of the
    # configured currency (priced from the table in force when the record was folded)
    team: str | None = None
    route: str | None = None
    version: str | None = None
    cached_tokens: int = 0
    cost_nanos: int = 0
    # the client API that carried it (issue 24): chat, messages, responses, completions, embeddings
    api: str | None = None
    # prompt tokens written to the upstream's cache (Anthropic's cache_creation_input_tokens), priced apart
    cache_creation_tokens: int = 0
    # the named data-plane listener that took it (issue 28); None on a single unnamed listener
    listener: str | None = None


class ChangeEvent(msgspec.Struct, kw_only=True):
    """One control-plane change: who did what to which object, when and from where."""

    id: str
    ts: float
    actor: str
    action: str
    target: str
    source_ip: str | None = None
    detail: dict = msgspec.field(default_factory=dict)


class UsageSummaryRow(msgspec.Struct, kw_only=True):
    """Usage aggregated per identity and model over a time window."""

    identity_id: str | None
    model: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int


class UsageGroup(msgspec.Struct, kw_only=True):
    """Usage aggregated by one dimension (identity, team, model, route or day); sums are exact."""

    key: str | None
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_nanos: int


class SigningKey(msgspec.Struct, kw_only=True):
    """A token-signing key pair; the private half is stored encrypted under the pepper."""

    kid: str
    alg: str
    private_sealed: str
    public_jwk: dict
    created_at: float
    retire_at: float  # stop signing with it after this
    expires_at: float  # drop it from the published key set after this


class IdentityActivity(msgspec.Struct, kw_only=True):
    """What an identity actually did, from the ledger: which models, and when last."""

    identity_id: str
    model: str | None
    requests: int
    last_at: float
