"""The one persistence interface of sluice. Implementations: SQL over SQLite or Postgres."""

from __future__ import annotations

import abc
from collections.abc import Iterable

from ..core.types import ApiKey, ChangeEvent, Identity, IdentityActivity, SigningKey, Team, UsageRecord, UsageSummaryRow


class Store(abc.ABC):
    """Identities, credentials, the usage ledger and the change log.

    Every method is async and may raise ``StoreUnavailable`` when the database cannot be reached.
    None of them is called on the data-plane hot path: keys are served from memory, usage is
    written in batches by a background writer.
    """

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, and create or migrate the schema to the newest version."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release every connection."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Round-trip to the database; raises ``StoreUnavailable`` if it does not answer in time."""

    @abc.abstractmethod
    async def schema_version(self) -> str | None:
        """The migration revision the database is at."""

    # identities
    @abc.abstractmethod
    async def put_identity(self, identity: Identity) -> None:
        """Insert, or replace by id, one identity."""

    @abc.abstractmethod
    async def get_identity(self, identity_id: str) -> Identity | None: ...

    @abc.abstractmethod
    async def find_identity(self, name: str) -> Identity | None:
        """The identity with this unique name, or None."""

    @abc.abstractmethod
    async def list_identities(self, *, include_disabled: bool = False) -> list[Identity]: ...

    # credentials
    @abc.abstractmethod
    async def put_key(self, key: ApiKey) -> None:
        """Insert, or replace by id, one key record."""

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_keys(self, identity_id: str | None = None) -> list[ApiKey]: ...

    @abc.abstractmethod
    async def revoke_key(self, key_id: str, at: float) -> bool:
        """Mark a key revoked (idempotent); False when it does not exist."""

    @abc.abstractmethod
    async def touch_keys(self, last_used: dict[str, float]) -> None:
        """Record last-used times in one batch (key id -> time)."""

    # ledger
    @abc.abstractmethod
    async def write_usage(self, records: Iterable[UsageRecord]) -> None:
        """Append usage records in one transaction."""

    @abc.abstractmethod
    async def list_usage(self, *, since: float = 0.0, limit: int = 1000) -> list[UsageRecord]:
        """The newest usage records since a time, newest first."""

    @abc.abstractmethod
    async def summarize_usage(self, *, since: float = 0.0) -> list[UsageSummaryRow]:
        """Requests, errors (status >= 400) and tokens per identity and model since a time."""

    @abc.abstractmethod
    async def identity_activity(self) -> list[IdentityActivity]:
        """Per identity and model: how many requests and when the last one was."""

    # teams
    @abc.abstractmethod
    async def put_team(self, team: Team) -> None:
        """Insert, or replace by name, one team."""

    @abc.abstractmethod
    async def get_team(self, name: str) -> Team | None: ...

    @abc.abstractmethod
    async def list_teams(self) -> list[Team]: ...

    # token-signing keys
    @abc.abstractmethod
    async def put_signing_key(self, key: SigningKey) -> None: ...

    @abc.abstractmethod
    async def list_signing_keys(self) -> list[SigningKey]:
        """All signing keys, newest first."""

    # change log
    @abc.abstractmethod
    async def record_change(self, event: ChangeEvent) -> None: ...

    @abc.abstractmethod
    async def list_changes(self, *, limit: int = 1000) -> list[ChangeEvent]:
        """The newest change events, newest first."""

    # routing policy (one versioned document; see routing.state)
    @abc.abstractmethod
    async def load_routing(self) -> tuple[int, bytes] | None:
        """(version, document) of the routing policy, or None before the first save."""

    @abc.abstractmethod
    async def save_routing(self, document: bytes, expect_version: int) -> int | None:
        """Store a new version if the current one is ``expect_version`` (0: none); the new version or None."""

    @abc.abstractmethod
    async def routing_version(self) -> int:
        """The routing policy's version (0: none yet): what replicas poll."""


class StoreUnavailable(Exception):
    """The database did not answer (down, locked, or timed out)."""
