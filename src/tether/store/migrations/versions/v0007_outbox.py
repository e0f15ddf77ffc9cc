"""outbox: durable approval notifications and pending OIDC sign-ins, shared by every node.

``notification_outbox`` holds each webhook notification from the transaction that created
the access request until it is delivered (or given up) and then for a retention period; a
lease (``holder``, ``lease_expires_at``) lets one node at a time deliver an entry when
several share the database. ``oidc_logins`` holds a sign-in between its start, its callback
and its collection, keyed by SHA-256 digests of the ``state`` and poll id only (a CHECK
keeps them digests); the PKCE verifier and nonce, and later the personal token, are sealed
under keys derived from those secrets, which the database never holds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "notification_outbox",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("payload", sa.JSON, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TS, nullable=False),
        sa.Column("delivered_at", _TS, nullable=True),
        sa.Column("failed_at", _TS, nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("holder", sa.Text, nullable=True),
        sa.Column("lease_expires_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notification_outbox")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_notification_outbox_attempts")),
    )
    op.create_index(
        "ix_notification_outbox_next_attempt_at", "notification_outbox", ["next_attempt_at"]
    )
    op.create_table(
        "oidc_logins",
        sa.Column("state_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("poll_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("sealed_start", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("expires_at", _TS, nullable=False),
        sa.Column("consumed_at", _TS, nullable=True),
        sa.Column("sealed_token", sa.LargeBinary, nullable=True),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("token_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("state_hash", name=op.f("pk_oidc_logins")),
        sa.UniqueConstraint("poll_hash", name=op.f("uq_oidc_logins_poll_hash")),
        sa.CheckConstraint(
            "length(state_hash) = 32 AND length(poll_hash) = 32",
            name=op.f("ck_oidc_logins_digests"),
        ),
    )
    op.create_index("ix_oidc_logins_expires_at", "oidc_logins", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_oidc_logins_expires_at", table_name="oidc_logins")
    op.drop_table("oidc_logins")
    op.drop_index("ix_notification_outbox_next_attempt_at", table_name="notification_outbox")
    op.drop_table("notification_outbox")
