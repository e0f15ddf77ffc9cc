"""the revocation ledger (tether.store.revocation_ledger).

A new one-row table, ``revocation_ledger``: how many revocations were ever recorded and
pruned, and the XOR of their keyed tags (HMACs under the row-seal key, stored nowhere),
sealed. A seal cannot see a deleted row; the ledger can: a node that loads the revocations
compares them with it, so a revocation deleted (or changed, or planted) behind Tether's back
turns the list unverified, and every credential is refused until an operator looks.

The migration cannot seal the ledger (it does not hold the master key): a database from
before it has revocations but no ledger, and its nodes refuse every credential until
``tether store seal`` adopts the revocations as they stand. A new database gets its ledger
with its first signing keys.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "revocation_ledger",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("entries", sa.BigInteger, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("pruned", sa.BigInteger, nullable=False),
        sa.Column("pruned_digest", sa.String(64), nullable=False),
        sa.Column("seal", sa.Text, nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_revocation_ledger_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_revocation_ledger")),
    )


def downgrade() -> None:
    op.drop_table("revocation_ledger")
