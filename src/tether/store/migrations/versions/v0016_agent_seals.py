"""agent seals: the agents' rows sealed like the users' (tether.crypto.seal).

Adds the nullable text column ``seal`` to ``agents``: the HMAC under the master key of an
agent's id, owner, labels and state. Without it, whoever can write to the database could
enable a disabled agent again or give it the labels a broader rule matches. Tether seals
on every write and refuses an agent whose row does not verify: its credentials are refused
at their next use and nothing is issued to it.

The migration cannot compute seals (it does not hold the master key): agents written
before this revision are refused until ``tether store seal`` adopts them (README,
Upgrading; docs/vault.md, "Tampering with the database").

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("agents", sa.Column("seal", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("seal")
