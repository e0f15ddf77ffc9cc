"""Table definitions, for queries. The migrations, not this module, create the tables."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per attempt to load the policy directory (startup and every reload).
policy_loads = Table(
    "policy_loads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(80), nullable=True),  # None when the set did not load
    Column("loaded_at", DateTime(timezone=True), nullable=False),
    Column("file_count", Integer, nullable=False),
    Column("rule_count", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    CheckConstraint("status IN ('active', 'rejected')", name="status"),
)


# --- Identity (revision 0002) -----------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp, written and read as UTC on every backend.

    PostgreSQL keeps ``timestamptz``; SQLite keeps text without a zone. Writing naive values
    is refused (their zone is a guess), aware ones are converted to UTC before they are
    written, so SQLite's text compares in time order; values read back are aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetime: the store only takes timezone-aware times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # SQLite: written as UTC above
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# JSON that stays SQL NULL for Python None (plain JSON would store the JSON literal null).
NullableJSON = JSON(none_as_null=True)

# Secrets are never stored, only their SHA-256; the length check keeps a raw secret out.
_DIGEST_LEN = "length(token_hash) = 32"

agents = Table(
    "agents",
    metadata,
    Column("id", Text, primary_key=True),
    Column("owner", Text, nullable=False),
    Column("purpose", Text, nullable=True),
    Column("labels", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=True),
    Column("seal", Text, nullable=True),  # 0016: tether.crypto.seal; null: refused
    # 0022: raised by one at each change through Tether, sealed (tether.crypto.revisions)
    Column("revision", Integer, nullable=False, server_default=text("0")),
    CheckConstraint("state IN ('active', 'disabled', 'offboarded')", name="state"),
    Index("ix_agents_owner", "owner"),
    Index("ix_agents_state", "state"),
)

runtimes = Table(
    "runtimes",
    metadata,
    Column("id", Text, primary_key=True),
    Column("agent_id", Text, ForeignKey("agents.id"), nullable=False),
    Column("platform", Text, nullable=False),
    Column("labels", JSON, nullable=False),
    Column("attested_by", Text, nullable=False),  # join method or workload-token issuer
    Column("first_seen_at", UTCDateTime, nullable=False),
    Column("last_seen_at", UTCDateTime, nullable=False),
    Column("address", Text, nullable=True),
    Column("seal", Text, nullable=True),  # 0019: tether.crypto.seal; null: refused
    # The target of credentials' composite key: a credential's runtime is one of its agent's.
    UniqueConstraint("id", "agent_id", name="uq_runtimes_id_agent_id"),
    Index("ix_runtimes_agent_id", "agent_id"),
)

join_tokens = Table(
    "join_tokens",
    metadata,
    Column("id", Text, primary_key=True),  # public part of the token
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("agent_id", Text, ForeignKey("agents.id"), nullable=False),
    Column("runtime_labels", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("used_at", UTCDateTime, nullable=True),
    Column("used_by_runtime", Text, nullable=True),  # no FK: the runtime is recorded after
    Column("seal", Text, nullable=True),  # 0015: tether.crypto.seal; null: refused
    CheckConstraint(_DIGEST_LEN, name="token_hash_is_digest"),
    CheckConstraint("(used_at IS NULL) = (used_by_runtime IS NULL)", name="used_by_whom"),
    Index("ix_join_tokens_agent_id", "agent_id"),
    Index("ix_join_tokens_expires_at", "expires_at"),  # 0027
)

credentials = Table(
    "credentials",
    metadata,
    Column("jti", Text, primary_key=True),
    Column("kind", String(24), nullable=False),
    Column("agent_id", Text, ForeignKey("agents.id"), nullable=False),
    Column("runtime_id", Text, nullable=True),
    Column("task_id", Text, nullable=True),
    Column("subject", Text, nullable=False),  # the user for delegated tokens, else the agent
    Column("actor_chain", NullableJSON, nullable=True),
    Column("scope", JSON, nullable=False),
    Column("issued_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=False),
    Column("serial", Text, nullable=True),  # certificates only
    Column("key_thumbprint", Text, nullable=True),
    Column("task_purpose", Text, nullable=True),  # 0008: null in rows recorded before it
    Column("user_groups", NullableJSON, nullable=True),  # 0008: the user's groups when delegated
    Column("token_jti", Text, nullable=True),  # 0008: certificates: the token it was issued under
    Column("derived_from", NullableJSON, nullable=True),  # 0010: jtis of the tokens it came from
    Column("family", Text, nullable=True),  # 0012: its renewal family (null: recorded before)
    Column("act_groups", NullableJSON, nullable=True),  # 0013: a chain's earlier users' groups
    Column("seal", Text, nullable=True),  # 0019: tether.crypto.seal; null: refused
    CheckConstraint("kind IN ('access_token', 'ssh_certificate', 'x509_certificate')", name="kind"),
    CheckConstraint("expires_at > issued_at", name="lifetime"),
    ForeignKeyConstraint(
        ["runtime_id", "agent_id"],
        ["runtimes.id", "runtimes.agent_id"],
        name="fk_credentials_runtime_of_agent",
    ),
    UniqueConstraint("kind", "serial", name="uq_credentials_kind_serial"),
    Index("ix_credentials_agent_id", "agent_id"),
    Index("ix_credentials_task_id", "task_id"),
    Index("ix_credentials_runtime_id", "runtime_id"),
    Index("ix_credentials_expires_at", "expires_at"),
    Index("ix_credentials_family", "family"),  # 0027
)

revocations = Table(
    "revocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("value", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("revoked_by", Text, nullable=False),
    Column("revoked_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),  # may be pruned after; None: never
    CheckConstraint("kind IN ('token', 'agent', 'task', 'runtime')", name="kind"),
    UniqueConstraint("kind", "value", name="uq_revocations_kind_value"),
    Index("ix_revocations_expires_at", "expires_at"),
    # Pollers read "id > cursor": SQLite must never reuse the id of a pruned newest row.
    sqlite_autoincrement=True,
)

# One row (id 1), sealed: how many revocations were ever recorded and pruned, and the XOR of
# their keyed tags (tether.store.revocation_ledger, migration 0021).
revocation_ledger = Table(
    "revocation_ledger",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("entries", BigInteger, nullable=False),
    Column("digest", String(64), nullable=False),
    Column("pruned", BigInteger, nullable=False),
    Column("pruned_digest", String(64), nullable=False),
    Column("seal", Text, nullable=True),
    CheckConstraint("id = 1", name="one_row"),
)

signing_keys = Table(
    "signing_keys",
    metadata,
    Column("kid", Text, primary_key=True),
    Column("purpose", String(24), nullable=False),
    Column("algorithm", Text, nullable=False),
    Column("public", Text, nullable=False),
    Column("private_encrypted", LargeBinary, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("active_from", UTCDateTime, nullable=False),
    Column("retire_after", UTCDateTime, nullable=True),
    Column("state", String(16), nullable=False),
    Column("seal", Text, nullable=True),  # migration 0020 (tether.crypto.seal)
    # 0024: raised by one at each change through Tether, sealed (tether.crypto.revisions)
    Column("revision", Integer, nullable=False, server_default=text("0")),
    CheckConstraint(
        "purpose IN ('access-token', 'ssh-user-ca', 'ssh-target-ca', 'x509-ca')", name="purpose"
    ),
    CheckConstraint("state IN ('active', 'previous', 'retired')", name="state"),
    # At most one active key per purpose, whatever node rotates.
    Index(
        "uq_signing_keys_one_active",
        "purpose",
        unique=True,
        sqlite_where=text("state = 'active'"),
        postgresql_where=text("state = 'active'"),
    ),
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("expires_at", UTCDateTime, nullable=True),
    Column("revoked_at", UTCDateTime, nullable=True),
    Column("last_used_at", UTCDateTime, nullable=True),
    Column("seal", Text, nullable=True),  # 0015: tether.crypto.seal; null: refused
    CheckConstraint(_DIGEST_LEN, name="token_hash_is_digest"),
)
