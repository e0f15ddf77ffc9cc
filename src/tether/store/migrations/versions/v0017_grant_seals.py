"""grant seals: the approvals' grants sealed (tether.crypto.seal).

Adds the nullable text column ``seal`` to ``grants``: the HMAC under the master key of a
grant's id, request, agent, task, rule, scope, key, expiry and revocation time. A grant
turns ``approval_required`` into an allow; without a seal, whoever can write to the
database could plant one (an approval nobody gave), push its expiry back or clear its
revocation. Tether seals every grant it writes and counts only grants whose seal verifies.

The migration cannot compute seals (it does not hold the master key): grants written
before this revision count for nothing until ``tether store seal`` adopts them (grants
are short-lived: letting them lapse and approving again is the other way).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("grants", sa.Column("seal", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("seal")
