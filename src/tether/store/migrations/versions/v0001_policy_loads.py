"""policy_loads: one row per attempt to load the policy directory.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "policy_loads",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("version", sa.String(80), nullable=True),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("file_count", sa.Integer, nullable=False),
        sa.Column("rule_count", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text, nullable=True),
        sa.CheckConstraint("status IN ('active', 'rejected')", name=op.f("ck_policy_loads_status")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_loads")),
    )


def downgrade() -> None:
    op.drop_table("policy_loads")
