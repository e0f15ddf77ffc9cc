"""access request chain: the earlier users of a delegation chain an access request came from.

Adds the nullable JSON column ``access_requests.delegation_chain``: for an action asked by an
agent acting for a delegation *chain* (``delegation_user`` is the outermost user), the ids of
the chain's earlier users, outermost first. Nobody of the chain may approve the request
(``allow_self`` aside), as the delegating user may not; and the request's pending key and
its grant are bound to the whole chain, so a grant made for one chain covers no other.

Rows written before this revision keep null: requests that name no chain, as before.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("access_requests", sa.Column("delegation_chain", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_column("delegation_chain")
