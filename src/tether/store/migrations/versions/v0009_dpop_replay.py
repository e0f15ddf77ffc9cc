"""dpop_replay: the DPoP proofs (``jti``) accepted by any node, until they expire.

One row per accepted proof, keyed by the verifier's fixed-size replay key (a digest of the
proof's key thumbprint and ``jti``), so that nodes behind one load balancer on one
PostgreSQL refuse a proof another node already accepted (:mod:`tether.store.replay`).
Rows are deleted once expired. The table is created on every backend so the schema is the
same everywhere, but only PostgreSQL deployments use it: a SQLite data directory is served
by one process, whose services share one in-memory replay cache (:mod:`tether.identity.replay`).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dpop_replay",
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_dpop_replay")),
    )
    op.create_index("ix_dpop_replay_expires_at", "dpop_replay", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dpop_replay_expires_at", table_name="dpop_replay")
    op.drop_table("dpop_replay")
