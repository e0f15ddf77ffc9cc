"""target revisions (tether.crypto.revisions).

Adds ``targets.revision`` (integer, 0 for the targets sealed before it). Each change of a
target through Tether (replaced; removed counts as one more on the node that removed it)
raises it and its seal covers it, so that a node can refuse a target's row older than one
it admitted: a target moved to a new address, or removed, can no longer be put back as it
was (its credential injected towards the old address) by writing its earlier row (and seal)
back. A row of revision 0 is sealed, as before, without it.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "targets",
        sa.Column("revision", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("targets") as batch:
        batch.drop_column("revision")
