"""agent row revisions (tether.crypto.revisions).

Adds ``agents.revision`` (integer, 0 for the rows written before it). Each change through
Tether raises it by one and the row seal covers it, so that a node can refuse an agent's
row older than one it admitted: disabling an agent can no longer be undone by writing its
earlier row (and seal) back. A row of revision 0 is sealed, as before, without it.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "agents",
        sa.Column("revision", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("revision")
