"""The config sections of identities: declared identities and teams, break-glass keys, secrets,
tokens, how replicas keep credentials current, and the trusted issuers of workload tokens."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from .strict import Strict as _Strict
from .types import MAX_INT, Environment, Role


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
