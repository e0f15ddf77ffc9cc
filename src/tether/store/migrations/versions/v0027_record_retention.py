"""record retention: indexes for deleting the records of credentials and join tokens long
expired (``identity.record_retention``, :func:`tether.store.credentials.prune_records`).

``ix_credentials_family`` lets the deletion keep every record whose renewal family still
has a record in retention (one index probe a record); ``ix_join_tokens_expires_at`` finds
the expired join tokens without reading the table.

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0027"
down_revision: str | None = "0026"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_credentials_family", "credentials", ["family"])
    op.create_index("ix_join_tokens_expires_at", "join_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_join_tokens_expires_at", table_name="join_tokens")
    op.drop_index("ix_credentials_family", table_name="credentials")
