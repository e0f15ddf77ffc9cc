"""credential act groups: the groups of every earlier user of a delegation chain.

Adds the nullable JSON column ``credentials.act_groups``: for a delegation chain (a delegated
token used as the actor of a further delegation), the users of the token's ``act`` claim
with the groups their own ID tokens gave, outermost first, as the token's ``act_groups``
claim holds them (``[{"sub": ..., "groups": [...]}, ...]``). The SSH broker, which sees a
certificate and not a token, rebuilds a session's claims from this record, so it decides
each action for every user of the chain with that user's own groups, as the HTTP broker
does from the token.

Rows recorded before this revision keep null: a chained certificate recorded so gives the
chain's earlier users no groups (they are allowed less, never more; fail closed), and such
certificates live at most ``certificate_lifetime``.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("credentials", sa.Column("act_groups", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("act_groups")
