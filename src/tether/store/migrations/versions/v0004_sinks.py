"""audit sinks: one durable delivery cursor per configured SIEM sink.

``audit_sink_cursors.last_seq`` is the ``seq`` of the last audit event the sink's receiver
acknowledged; delivery resumes after it, so a restart neither skips nor (beyond the batch
in flight) repeats events. ``holder`` and ``lease_expires_at`` let one node at a time
deliver a sink when several nodes share the store; the cursor only moves forward
(``last_seq >= 0``, and the update is conditional on the new value being larger).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "audit_sink_cursors",
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_error_at", _TS, nullable=True),
        sa.Column("holder", sa.Text, nullable=True),
        sa.Column("lease_expires_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_audit_sink_cursors")),
        sa.CheckConstraint("last_seq >= 0", name=op.f("ck_audit_sink_cursors_last_seq")),
    )


def downgrade() -> None:
    op.drop_table("audit_sink_cursors")
