"""login_failures: recent failed sign-ins per user name, shared by every node.

One row per name with recent sign-in attempts, keyed by the SHA-256 of the name as
presented (so a password typed into the name field is not kept in clear): how many attempts
since ``window_start``. Every password sign-in counts itself here in one atomic statement
before the password is checked, and a successful one deletes its row, so nodes behind one
load balancer on one PostgreSQL share one limit (:mod:`tether.users.throttle`). Rows whose
window has passed are deleted by later successful sign-ins.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_failures")),
    )
    op.create_index("ix_login_failures_window_start", "login_failures", ["window_start"])


def downgrade() -> None:
    op.drop_index("ix_login_failures_window_start", table_name="login_failures")
    op.drop_table("login_failures")
