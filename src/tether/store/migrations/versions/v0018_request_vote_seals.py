"""access request and vote seals (tether.crypto.seal).

Adds the nullable text column ``seal`` to ``access_requests`` and ``approval_votes``. A
request's seal covers what it was made with and never changes (agent, task, runtime,
delegation, owner, target, action and its digest, rule, scope, how many approvals from
whom, validity, the agent's reason, when it was made and lapses); a vote's covers its
request, its voter and its vote. Without them, whoever can write to the database could
lower a request's quorum, name themselves an approver, reword the reason an approver reads,
or plant a vote that a single genuine approval then completes.

The migration cannot compute seals (it does not hold the master key): a request pending
at the upgrade cannot be voted on (the vote is refused as a conflict); it lapses after the
approvals' ``pending_ttl`` and the agent asks again. Votes from before it do not count.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("access_requests", "approval_votes")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("seal", sa.Text, nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seal")
