"""credential family: the renewal family of each issued credential.

Adds the nullable text column ``credentials.family``: the ``family`` claim of an access
token (the jti of the first token of the chain of renewals and re-scopings of an agent's
own token it belongs to, :mod:`tether.identity.claims`), and, for a certificate, that of
the token it was issued under. Revoking a token by jti reads the family of its row and
revokes the family too, so that every renewal of a stolen token ends with it; the SSH
broker, which sees a certificate and not a token, rebuilds the session's claims with it.

Rows recorded before this revision keep null: their tokens carry no ``family`` claim and
are revoked by their jti alone, as before.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("credentials", sa.Column("family", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("family")
