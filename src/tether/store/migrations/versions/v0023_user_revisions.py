"""user revisions (tether.crypto.revisions).

Adds ``users.revision`` (integer, 0 for the users sealed before it). Each seal of a user
raises it by one and covers it, so that a node can refuse a user older than one it
admitted: a user disabled, or stripped of a role, can no longer be put back as they were
by writing their earlier row (and seal) back. A user of revision 0 is sealed, as before,
without it.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "users", sa.Column("revision", sa.Integer, nullable=False, server_default=sa.text("0"))
    )


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("revision")
