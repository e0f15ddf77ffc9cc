"""identity: agents, runtimes, join tokens, issued credentials, revocations, keys, admin tokens.

Constraints carry the security rules into the database, so that a bug above it or a second
node cannot break them: states and kinds are CHECKed, secrets are stored as 32-byte digests
only, a credential's runtime must belong to its agent, a certificate serial is unique per
kind, one revocation per (kind, value), one active signing key per purpose, and SQLite never
reuses a revocation id (pollers follow ids).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_DIGEST = "length(token_hash) = 32"


def upgrade() -> None:
    _agents()
    _runtimes()
    _join_tokens()
    _credentials()
    _revocations()
    _signing_keys()
    _admin_tokens()


def downgrade() -> None:
    for table in (
        "admin_tokens",
        "signing_keys",
        "revocations",
        "credentials",
        "join_tokens",
        "runtimes",
        "agents",
    ):
        op.drop_table(table)


def _agents() -> None:
    op.create_table(
        "agents",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("purpose", sa.Text, nullable=True),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agents")),
        sa.CheckConstraint(
            "state IN ('active', 'disabled', 'offboarded')", name=op.f("ck_agents_state")
        ),
    )
    op.create_index("ix_agents_owner", "agents", ["owner"])
    op.create_index("ix_agents_state", "agents", ["state"])


def _runtimes() -> None:
    op.create_table(
        "runtimes",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("platform", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("attested_by", sa.Text, nullable=False),
        sa.Column("first_seen_at", _TS, nullable=False),
        sa.Column("last_seen_at", _TS, nullable=False),
        sa.Column("address", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runtimes")),
        sa.UniqueConstraint("id", "agent_id", name=op.f("uq_runtimes_id_agent_id")),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_runtimes_agent_id_agents")
        ),
    )
    op.create_index("ix_runtimes_agent_id", "runtimes", ["agent_id"])


def _join_tokens() -> None:
    op.create_table(
        "join_tokens",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("runtime_labels", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("used_at", _TS, nullable=True),
        sa.Column("used_by_runtime", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_join_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_join_tokens_token_hash")),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_join_tokens_agent_id_agents")
        ),
        sa.CheckConstraint(_DIGEST, name=op.f("ck_join_tokens_token_hash_is_digest")),
        sa.CheckConstraint(
            "(used_at IS NULL) = (used_by_runtime IS NULL)",
            name=op.f("ck_join_tokens_used_by_whom"),
        ),
    )
    op.create_index("ix_join_tokens_agent_id", "join_tokens", ["agent_id"])


def _credentials() -> None:
    op.create_table(
        "credentials",
        sa.Column("jti", sa.Text, nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("agent_id", sa.Text, nullable=False),
        sa.Column("runtime_id", sa.Text, nullable=True),
        sa.Column("task_id", sa.Text, nullable=True),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("actor_chain", sa.JSON, nullable=True),
        sa.Column("scope", sa.JSON, nullable=False),
        sa.Column("issued_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("serial", sa.Text, nullable=True),
        sa.Column("key_thumbprint", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("jti", name=op.f("pk_credentials")),
        sa.CheckConstraint(
            "kind IN ('access_token', 'ssh_certificate', 'x509_certificate')",
            name=op.f("ck_credentials_kind"),
        ),
        sa.CheckConstraint("expires_at > issued_at", name=op.f("ck_credentials_lifetime")),
        sa.ForeignKeyConstraint(
            ["agent_id"], ["agents.id"], name=op.f("fk_credentials_agent_id_agents")
        ),
        sa.ForeignKeyConstraint(
            ["runtime_id", "agent_id"],
            ["runtimes.id", "runtimes.agent_id"],
            name=op.f("fk_credentials_runtime_of_agent"),
        ),
        sa.UniqueConstraint("kind", "serial", name=op.f("uq_credentials_kind_serial")),
    )
    for column in ("agent_id", "task_id", "runtime_id", "expires_at"):
        op.create_index(f"ix_credentials_{column}", "credentials", [column])


def _revocations() -> None:
    op.create_table(
        "revocations",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("revoked_by", sa.Text, nullable=False),
        sa.Column("revoked_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocations")),
        sa.CheckConstraint(
            "kind IN ('token', 'agent', 'task', 'runtime')", name=op.f("ck_revocations_kind")
        ),
        sa.UniqueConstraint("kind", "value", name=op.f("uq_revocations_kind_value")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_revocations_expires_at", "revocations", ["expires_at"])


def _signing_keys() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text, nullable=False),
        sa.Column("purpose", sa.String(24), nullable=False),
        sa.Column("algorithm", sa.Text, nullable=False),
        sa.Column("public", sa.Text, nullable=False),
        sa.Column("private_encrypted", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("active_from", _TS, nullable=False),
        sa.Column("retire_after", _TS, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
        sa.CheckConstraint(
            "purpose IN ('access-token', 'ssh-user-ca', 'ssh-target-ca', 'x509-ca')",
            name=op.f("ck_signing_keys_purpose"),
        ),
        sa.CheckConstraint(
            "state IN ('active', 'previous', 'retired')", name=op.f("ck_signing_keys_state")
        ),
    )
    op.create_index(
        "uq_signing_keys_one_active",
        "signing_keys",
        ["purpose"],
        unique=True,
        sqlite_where=sa.text("state = 'active'"),
        postgresql_where=sa.text("state = 'active'"),
    )


def _admin_tokens() -> None:
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=True),
        sa.Column("revoked_at", _TS, nullable=True),
        sa.Column("last_used_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_tokens_token_hash")),
        sa.CheckConstraint(_DIGEST, name=op.f("ck_admin_tokens_token_hash_is_digest")),
    )
