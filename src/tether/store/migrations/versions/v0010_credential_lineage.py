"""credential lineage: the tokens a credential was derived from.

Adds the nullable JSON column ``credentials.derived_from``: the jtis of every token a
credential came from (a delegation's actor token and its own sources, the delegated token a
re-scoping started from, the token a certificate-bound token was bound under), nearest
first, as the token's ``derived_from`` claim holds them. The SSH broker, which sees a
certificate and not a token, rebuilds the claims of a session from this record, so that
revoking any token upstream ends the sessions of certificates issued under tokens derived
from it.

Rows recorded before this revision keep null (nothing recorded): their credentials were
issued before tokens named their sources and live at most ``max_token_lifetime``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("credentials", sa.Column("derived_from", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("derived_from")
