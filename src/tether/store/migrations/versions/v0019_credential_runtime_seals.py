"""credential and runtime seals (tether.crypto.seal).

Adds the nullable text column ``seal`` to ``credentials`` and ``runtimes``. An SSH login
with an agent certificate (or, with ``ssh.allow_plain_keys``, a bare key) runs under the
claims rebuilt from the certificate's credential record and its runtime's row: scope,
subject, groups, actor chain, task, the runtime's labels; a renewal is bounded by the
runtime's last attestation. Without seals, whoever can write to the database could widen a
session's scope, give it another user's groups, plant a record naming a key of their own,
or push an attestation forward. A credential's seal covers every column (a record never
changes once written); a runtime's, everything an attestation writes.

The migration cannot compute seals (it does not hold the master key): records and
runtimes from before it are refused (SSH logins under certificates issued before the
upgrade, renewals of tokens attested before it) until ``tether store seal`` adopts them,
or the agents join again.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("credentials", "runtimes")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("seal", sa.Text, nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seal")
