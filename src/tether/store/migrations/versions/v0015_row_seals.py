"""row seals: an HMAC under the master key over each sealed row's security columns.

Adds the nullable text column ``seal`` to the tables whose rows grant something:
``targets`` (where and how a credential goes), ``admin_tokens``, ``join_tokens`` and
``users``. The seal is ``HMAC-SHA256(HKDF(master, "tether/row-seal/v1"), canonical(table,
columns))`` (:mod:`tether.crypto.seal`); Tether computes it on every write and refuses a
row whose seal does not verify, so a row written behind its back (by whoever can write to
the database without the master key) is not used.

The migration cannot compute seals (it does not hold the master key): rows written before
this revision keep null and are refused until ``tether store seal`` adopts them
(docs/vault.md, "Tampering with the database").

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEALED_TABLES = ("targets", "admin_tokens", "join_tokens", "users", "user_tokens")


def upgrade() -> None:
    for table in SEALED_TABLES:
        op.add_column(table, sa.Column("seal", sa.Text, nullable=True))


def downgrade() -> None:
    for table in SEALED_TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seal")
