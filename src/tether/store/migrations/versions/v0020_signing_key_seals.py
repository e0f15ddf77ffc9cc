"""signing key seals (tether.crypto.seal).

Adds the nullable text column ``seal`` to ``signing_keys``. A key's private part is an
envelope bound to its purpose and kid, so a database writer cannot plant a key of their
own; but its ``state`` and ``retire_after`` were not protected: a writer could keep a
rotated-out access-token key verifying long after its overlap (``retire_after`` pushed
back), which matters exactly when the key was rotated because it leaked. The seal covers
every column.

The migration cannot compute seals (it does not hold the master key): a node refuses to
start on keys from before it until ``tether store seal`` adopts them.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("signing_keys", sa.Column("seal", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signing_keys") as batch:
        batch.drop_column("seal")
