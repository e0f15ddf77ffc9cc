"""vault: encrypted secrets and the target registry.

``vault_secrets`` holds one row per secret: ``ciphertext`` is the envelope-encrypted value
(:class:`tether.crypto.envelope.EnvelopeCipher`, purpose ``vault.secret``, bound to the
secret's name, so a ciphertext copied onto another row does not decrypt). ``version`` starts
at 1 and grows by one on every rotation; writers update conditionally on the version they
read (optimistic concurrency), so two concurrent rotations never silently lose one.

``targets`` holds one row per target; ``spec`` is the validated JSON form of the kind's spec
model (secret *names*, never secret values) and ``kind`` is checked against the known kinds.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "vault_secrets",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("ciphertext", sa.Text, nullable=False),
        sa.Column("description", sa.Text, nullable=True),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_vault_secrets")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_vault_secrets_version")),
    )
    op.create_table(
        "targets",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_targets")),
        sa.CheckConstraint("kind IN ('http', 'ssh', 'postgres')", name=op.f("ck_targets_kind")),
    )
    op.create_index("ix_targets_kind", "targets", ["kind"])


def downgrade() -> None:
    op.drop_index("ix_targets_kind", table_name="targets")
    op.drop_table("targets")
    op.drop_table("vault_secrets")
