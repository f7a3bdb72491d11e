"""The one persistence interface of sluice. Implementations: SQL over SQLite or Postgres."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from ..core.types import ApiKey, ChangeEvent, Identity, IdentityActivity, SigningKey, Team, UsageGroup, UsageRecord, UsageSummaryRow


class Writes:
    """Identity-state writes that land together with the change record explaining them.

    ``Store.apply`` writes them, the record, and a new identity-state version in one
    transaction: either all of it is in the store or none of it is.
    """

    __slots__ = ("identities", "keys", "revocations", "teams", "policy_versions", "policy_activation", "changesets",
                 "rows", "transitions", "signing_keys", "deletions")

    def __init__(self) -> None:
        self.identities: list[Identity] = []
        self.keys: list[ApiKey] = []
        self.revocations: list[tuple[str, float]] = []
        self.teams: list[Team] = []
        self.policy_versions: list[dict] = []
        self.policy_activation: tuple[int, int] | None = None
        self.changesets: list[dict] = []
        self.rows: list[tuple[Any, dict]] = []
        self.transitions: list[tuple[Any, str, dict, tuple[Any, ...], Exception]] = []
        self.signing_keys: list[SigningKey] = []
        self.deletions: list[tuple[Any, tuple[Any, ...]]] = []

    def put_identity(self, identity: Identity) -> Writes:
        """Insert, or replace by id, an identity."""
        self.identities.append(identity)
        return self

    def put_key(self, key: ApiKey) -> Writes:
        """Insert, or replace by id, a key record."""
        self.keys.append(key)
        return self

    def revoke_key(self, key_id: str, at: float) -> Writes:
        """Revoke a key at ``at`` unless it is revoked already."""
        self.revocations.append((key_id, at))
        return self

    def put_team(self, team: Team) -> Writes:
        """Insert, or replace by name, a team."""
        self.teams.append(team)
        return self

    def put_policy_version(self, row: dict) -> Writes:
        """Insert one immutable policy version (columns of ``policy_versions``)."""
        self.policy_versions.append(row)
        return self

    def activate_policy(self, version: int, expect: int) -> Writes:
        """Point the active policy at ``version`` if it still is ``expect``; else the whole apply fails with 409."""
        self.policy_activation = (version, expect)
        return self

    def put_changeset(self, row: dict) -> Writes:
        """Insert, or replace by id, a policy change set (columns of ``policy_changesets``)."""
        self.changesets.append(row)
        return self

    def put_signing_key(self, key: SigningKey) -> Writes:
        """Insert, or replace by kid, a token-signing key."""
        self.signing_keys.append(key)
        return self

    def insert(self, table: Any, row: dict) -> Writes:
        """Insert one row into ``table`` (a record that must land with its change, or not at all)."""
        self.rows.append((table, row))
        return self

    def transition(self, table: Any, key: str, values: dict, *where: Any, otherwise: Exception) -> Writes:
        """Set ``values`` on the row of ``table`` whose ``id`` is ``key`` if every ``where`` clause holds;
        else the whole apply fails with ``otherwise`` (the state moved meanwhile: decided, used, expired)."""
        self.transitions.append((table, key, values, where, otherwise))
        return self

    def delete(self, table: Any, *where: Any) -> Writes:
        """Delete the rows of ``table`` where every clause holds (an offboarded identity's stored responses)."""
        self.deletions.append((table, where))
        return self

    @property
    def bumps_version(self) -> bool:
        """Whether ``apply`` bumps the identity-state version (every replica then reloads what it caches):
        always, unless the writes are only rows, transitions and deletions, which no replica caches."""
        if not (self.rows or self.transitions or self.deletions):
            return True
        return bool(self.identities or self.keys or self.revocations or self.teams or self.policy_versions
                    or self.changesets or self.policy_activation is not None or self.signing_keys)


class Journal(Protocol):
    """Appends the audit entries of changes inside the transaction that writes them (sluice.audit).

    ``state`` is (before, after) of the objects the change touched, or None to take them from the
    change's detail; ``linked`` False for an entry with no change row (a failed login).
    """

    async def lock(self, conn: Any) -> None:
        """Serialise with every other audited change before reading the rows it will touch."""

    async def append(self, conn: Any, events: Sequence[ChangeEvent], *, state: tuple[Any, Any] | None,
                     linked: bool = True) -> None: ...


class Subscription(abc.ABC):
    """A live feed of identity-state changes from the database (Postgres ``LISTEN``)."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the connection behind it is lost; subscribe again."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop listening and release the connection."""


class Store(abc.ABC):
    """Identities, credentials, the usage ledger and the change log.

    Every method is async and may raise ``StoreUnavailable`` when the database cannot be reached.
    None of them is called on the data-plane hot path: keys are served from memory, usage is
    written in batches by a background writer.
    """

    paged_at = 0.0  # monotonic time of the last page of a long listing read (a reload progressing)

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

    # identity state, changed as a whole
    @abc.abstractmethod
    async def apply(self, writes: Writes, *changes: ChangeEvent, expect_version: int | None = None) -> None:
        """Write identities, keys, revocations, teams (and rows and transitions of other tables) and their
        change records in one transaction, and bump the identity-state version with them (unless only rows and
        transitions were written; revocations keep the first time).

        ``expect_version``: the version the caller planned the writes against; if another change
        landed since, nothing is written and ``Conflict`` (code ``state_changed``) is raised."""

    @abc.abstractmethod
    async def apply_each(self, changes: Sequence[tuple[Writes, ChangeEvent]], *,
                         expect_version: int | None = None) -> None:
        """Several changes in one transaction, each with its own writes: its audit entry's before
        and after cover only the rows that change touched. ``expect_version`` as in ``apply``."""

    @abc.abstractmethod
    async def identity_version(self) -> int:
        """The identity-state version: one indexed read, polled by every replica."""

    async def identity_changes(self, after: int, upto: int) -> Any:
        """What versions ``after``+1 .. ``upto`` changed (``identity_changes.Changes``: the ids of identities,
        keys and teams), or None when the store cannot say exactly: the caller reloads whole."""
        return None

    async def identity_rows(self, identity_ids: Iterable[str],
                            key_ids: Iterable[str]) -> tuple[dict[str, Identity | None], list[ApiKey]]:
        """Every identity named (None: no longer stored) with every stored key of it, and every key named."""
        raise NotImplementedError

    async def subscribe(self, on_change: Callable[[], None]) -> Subscription | None:
        """Call ``on_change`` soon after any replica commits an identity change, or None when
        the database cannot push (SQLite: replicas rely on polling the version)."""
        return None

    # identities
    async def put_identity(self, identity: Identity) -> None:
        """Insert, or replace by id, one identity."""
        await self.apply(Writes().put_identity(identity))

    @abc.abstractmethod
    async def get_identity(self, identity_id: str) -> Identity | None: ...

    @abc.abstractmethod
    async def find_identity(self, name: str) -> Identity | None:
        """The identity with this unique name, or None."""

    @abc.abstractmethod
    async def list_identities(self, *, include_disabled: bool = False, source: str | None = None) -> list[Identity]:
        """Identities by name; ``source`` (``config`` or ``api``): only those that came from there."""

    # credentials
    async def put_key(self, key: ApiKey) -> None:
        """Insert, or replace by id, one key record."""
        await self.apply(Writes().put_key(key))

    @abc.abstractmethod
    async def get_key(self, key_id: str) -> ApiKey | None: ...

    @abc.abstractmethod
    async def list_keys(self, identity_id: str | None = None, *, source: str | None = None) -> list[ApiKey]:
        """Keys by age, of one identity or all; ``source``: only those that came from there."""

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
    async def aggregate_usage(self, by: str, *, since: float = 0.0, until: float | None = None,
                              key_id: str | None = None) -> list[UsageGroup]:
        """Usage summed per identity, key, team, model, route, API or day (UTC, ``YYYY-MM-DD``) in ``[since, until)``,
        of one key's requests when ``key_id`` is given."""
        raise NotImplementedError

    async def rollup_usage(self, by: Sequence[str], *, grain: str = "minute", since: float = 0.0,
                           until: float | None = None) -> list[Any]:
        """Rollup rows of one grain (minute, hour, day) with buckets in ``[since, until)`` merged per value of ``by``
        (``bucket``, ``day``, a group column): sums, and latency and TTFT histograms (``store.usage_reads.UsageRollup``)."""
        raise NotImplementedError

    @abc.abstractmethod
    async def identity_activity(self) -> list[IdentityActivity]:
        """Per identity and model: how many requests and when the last one was."""

    # teams
    async def put_team(self, team: Team) -> None:
        """Insert, or replace by name, one team."""
        await self.apply(Writes().put_team(team))

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

    async def record_audit(self, event: ChangeEvent) -> None:
        """Append an audit entry with no change behind it (a failed control-plane login)."""
        raise NotImplementedError

    # the routing document an older sluice kept before policy versions (read once, to seed version 1)
    @abc.abstractmethod
    async def load_routing(self) -> tuple[int, bytes] | None:
        """(version, document) of the legacy routing policy, or None."""

    # versioned policy (see sluice.policy); written through ``apply``
    @abc.abstractmethod
    async def active_policy(self) -> int:
        """The active policy version (0: none yet): one primary-key read."""

    @abc.abstractmethod
    async def policy_version(self, version: int) -> dict | None:
        """One policy version's row, or None."""

    @abc.abstractmethod
    async def list_policy_versions(self, *, limit: int = 100) -> list[dict]:
        """The newest policy versions without their documents, newest first."""

    @abc.abstractmethod
    async def changeset(self, changeset_id: str) -> dict | None:
        """One change set's row, or None."""

    @abc.abstractmethod
    async def list_changesets(self, *, limit: int = 100) -> list[dict]:
        """The newest change sets without their documents, newest first."""


class StoreUnavailable(Exception):
    """The database did not answer (down, locked, or timed out)."""
