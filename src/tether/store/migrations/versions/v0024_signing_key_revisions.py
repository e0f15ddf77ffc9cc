"""signing key revisions (tether.crypto.revisions).

Adds ``signing_keys.revision`` (integer, 0 for the keys sealed before it). Each change of a
key's state raises it by one and its seal covers it, so that a node can refuse a key's row
older than one it admitted: a key rotated out (because it leaked, say) can no longer be made
active again by writing its earlier row (and seal) back. A row of revision 0 is sealed, as
before, without it.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "signing_keys",
        sa.Column("revision", sa.Integer, nullable=False, server_default=sa.text("0")),
    )


def downgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("revision")
