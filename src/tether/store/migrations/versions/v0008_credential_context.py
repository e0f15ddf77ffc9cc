"""credential context: what a certificate's session needs to be decided like its token.

Adds three nullable columns to ``credentials``:

* ``task_purpose``: the task purpose of the token a credential was issued under, so that
  the SSH broker (which sees a certificate, not a token) puts ``task.purpose`` in its policy
  requests;
* ``user_groups``: the delegating user's groups of a delegated token, so a delegated agent's SSH
  session is decided for the user too (the policy's delegation intersection);
* ``token_jti``: for a certificate, the jti of the token it was issued under, so revoking that
  token also ends sessions opened with the bare key the certificate named.

Rows recorded before this revision keep nulls; the SSH broker refuses a certificate whose
record has no purpose (fail closed: it cannot build the request), and such certificates live
at most an hour, after which agents hold new ones.

It also deletes the ``ssh-target-ca`` signing key that earlier versions created with the
node's keys and never used: the target-facing CA is the one the vault holds
(``tether/ssh-target-ca``, :mod:`tether.vault.ssh_certs`). Nothing was ever signed with the
deleted key, so no host trusts it; downgrading does not bring it back (an older node would
create a fresh one, as on its first start).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("credentials", sa.Column("task_purpose", sa.Text, nullable=True))
    op.add_column("credentials", sa.Column("user_groups", sa.JSON, nullable=True))
    op.add_column("credentials", sa.Column("token_jti", sa.Text, nullable=True))
    op.execute(sa.text("DELETE FROM signing_keys WHERE purpose = 'ssh-target-ca'"))


def downgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("token_jti")
        batch.drop_column("user_groups")
        batch.drop_column("task_purpose")
