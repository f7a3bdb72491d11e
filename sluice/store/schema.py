"""Table definitions, shared by the store's queries and by the migrations' autogenerate."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, Index, Integer, MetaData, String, Table, Text, UniqueConstraint

# Per-event row numbers: 64-bit on Postgres (migration 0011); SQLite's INTEGER PRIMARY KEY is its 64-bit rowid.
RowSeq = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

identities = Table(
    "identities", metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("owner", String(256), nullable=False),
    Column("environment", String(16), nullable=False),
    Column("models", Text, nullable=False),  # JSON array
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", Float),
    Column("disabled_at", Float),
    Column("source", String(16), nullable=False),
    Column("team", String(128)),
    Column("roles", Text, nullable=False, server_default='["invoker"]'),  # JSON array
)

teams = Table(
    "teams", metadata,
    Column("name", String(128), primary_key=True),
    Column("owner", String(256), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
)

signing_keys = Table(
    "signing_keys", metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("private_sealed", Text, nullable=False),
    Column("public_jwk", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("retire_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys", metadata,
    Column("id", String(64), primary_key=True),
    Column("identity_id", String(64), nullable=False, index=True),
    Column("hash", String(64), nullable=False, unique=True),
    Column("display", String(64), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("created_by", String(128), nullable=False),
    Column("expires_at", Float),
    Column("revoked_at", Float),
    Column("last_used_at", Float),
    Column("source", String(16), nullable=False),
    Column("plane", String(16), nullable=False, server_default="data"),
)

usage = Table(
    "usage", metadata,
    Column("seq", RowSeq, primary_key=True, autoincrement=True),
    Column("request_id", String(64), nullable=False),
    Column("ts", Float, nullable=False),
    Column("identity_id", String(64)),
    Column("key_id", String(64)),
    Column("endpoint", String(64), nullable=False),
    Column("model", String(256)),
    Column("upstream", String(128)),
    Column("status", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float),
    Column("upstream_ms", Float),
    Column("stream", Boolean, nullable=False),
    Column("usage_source", String(16), nullable=False),
    Column("error_code", String(64)),
    Column("team", String(128)),
    Column("route", String(128)),
    Column("version", String(128)),
    Column("cached_tokens", Integer, nullable=False, server_default="0"),
    Column("cost_nanos", BigInteger, nullable=False, server_default="0"),
    Column("api", String(16)),  # the client API that carried the request (migration 0014)
    Column("cache_creation_tokens", Integer, nullable=False, server_default="0"),  # migration 0014
    Column("listener", String(64)),  # the named data-plane listener that took it (migration 0017)
    Index("ix_usage_ts", "ts"),  # (identity_id, ts) was dropped in migration 0012: no query used it
    Index("ux_usage_request_id", "request_id", unique=True),  # the idempotency key (migration 0007)
    # On Postgres (migration 0016) the table is partitioned by day on ``ts``: the primary key is (seq, ts) and
    # the idempotency key (request_id, ts), a partitioned table's unique keys holding its partition key.
)


# the columns a summary of the rollups reads besides the bucket: usage_reads.DIMENSIONS' columns and TOTALS
SUMMARY_COLUMNS = ("identity_id", "key_id", "team", "model", "route", "api", "version", "requests", "errors",
                   "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos")


def _rollup(grain: str) -> Table:
    """Usage summed per ``grain`` and group (sluice/store/rollups.py says what each column holds); keyed by
    the bucket's start and the group, without a rowid on SQLite (the key is the table's own B-tree)."""
    from .rollups import KEY, VALUES

    def column(name: str) -> Column:
        if name in KEY:
            return Column(name, Integer if name == "status_class" else String(256), primary_key=True)
        if name in ("lat_min", "lat_max", "last_ts", "ttft_min", "ttft_max"):
            return Column(name, Float, nullable=not name.startswith(("lat", "last")))  # no TTFT: NULL
        return Column(name, BigInteger, nullable=False)  # sums and histogram counts

    return Table(
        f"usage_{grain}", metadata,
        Column("bucket", BigInteger, primary_key=True, autoincrement=False),  # Unix seconds, start of the bucket
        *map(column, KEY + VALUES),
        # Postgres (migration 0019): what a summary reads, beside the bucket: an index-only scan instead of the
        # ~1.2 KB rows (SQLite has no INCLUDE; its table is its primary key's B-tree)
        Index(f"ix_usage_{grain}_sums", "bucket", postgresql_include=list(SUMMARY_COLUMNS)),
        sqlite_with_rowid=False,
    )


# migration 0015: one table per grain; nothing refers to the raw rows, so dropping those leaves these whole
usage_minute, usage_hour, usage_day = (_rollup(g) for g in ("minute", "hour", "day"))

changes = Table(
    "changes", metadata,
    Column("seq", RowSeq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("ts", Float, nullable=False, index=True),
    Column("actor", String(128), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),  # an owner's name, when offboarding
    Column("source_ip", String(64)),
    Column("detail", Text, nullable=False),  # JSON object
)

# One row (id 1): the identity-state version, bumped with every identity, key, role or team change.
identity_state = Table(
    "identity_state", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

# What each identity-state version changed (migration 0018; sluice/store/identity_changes.py): kind
# identity, key, team, none (a policy version) or all (reload whole); pruned by age as versions are bumped.
identity_changes = Table(
    "identity_changes", metadata,
    Column("version", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(16), primary_key=True),
    Column("entity_id", String(256), primary_key=True),
    Column("ts", Float, nullable=False, index=True),
)

routing_policy = Table(
    "routing_policy", metadata,
    Column("id", Integer, primary_key=True),  # always 1: one document
    Column("version", Integer, nullable=False),
    Column("document", Text, nullable=False),  # JSON RoutingPolicy
    Column("updated_at", Float, nullable=False),
)

# Versioned policy (see sluice.policy): immutable versions, the one active pointer, change sets.
policy_versions = Table(
    "policy_versions", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("parent", Integer),
    Column("author", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("kind", String(16), nullable=False),  # seed, change, rollback, switch, config
    Column("hash", String(64), nullable=False),  # sha256 of the canonical document
    Column("document", Text, nullable=False),  # canonical JSON
)

policy_active = Table(
    "policy_active", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("version", Integer, nullable=False),  # 0: none yet
    Column("updated_at", Float, nullable=False),
)

policy_changesets = Table(
    "policy_changesets", metadata,
    Column("seq", RowSeq, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("base", Integer, nullable=False),
    Column("author", String(128), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("reason", Text, nullable=False),
    Column("status", String(16), nullable=False),  # pending, applied, rejected
    Column("sections", Text, nullable=False),  # JSON list of the sections it changes
    Column("needs_approval", Boolean, nullable=False),
    Column("document", Text, nullable=False),  # the whole proposed document, canonical JSON
    Column("decided_by", String(128)),
    Column("decided_at", Float),
    Column("decision_reason", Text),
    Column("version", Integer),  # the version it became
)

# The audit log (see sluice.audit): one row per entry, dense ``seq`` from 0, the canonical entry and
# the Merkle tree head after it; a head row serialises appends; signed checkpoints of the tree.
audit_log = Table(
    "audit_log", metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("entry", Text, nullable=False),  # canonical JSON, hashed as the Merkle leaf
    Column("root", String(64), nullable=False),  # hex tree head of entries 0..seq
    Column("ts", Float, nullable=False, index=True),
)

audit_head = Table(
    "audit_head", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("size", BigInteger, nullable=False),
    Column("frontier", Text, nullable=False),  # JSON list of hex subtree roots (the compact range)
)

audit_checkpoints = Table(
    "audit_checkpoints", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("size", BigInteger, nullable=False),
    Column("key_hash", String(8), nullable=False),
    Column("note", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("size", "key_hash", name="uq_audit_checkpoint"),
)
