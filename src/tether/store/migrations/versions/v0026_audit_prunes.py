"""audit prunes: the signed markers that let the start of the audit trail be archived and
deleted (``tether audit prune``, :mod:`tether.audit.prune`).

``audit_prunes`` holds one row per prune: the last event archived and deleted (``seq``), its
hash, when, the archive file's SHA-256 and event count, and Tether's signature over all of
them (:func:`tether.audit.canonical.prune_statement`). It is append-only like the trail.

The append-only triggers of ``audit_events`` and ``audit_checkpoints`` (migration 0003) are
replaced by ones that still refuse every ``UPDATE`` and every ``DELETE`` of a row after the
newest prune marker, but let the rows up to it be deleted: what a prune does after it has
written its archive and its marker. A marker can only be written with the signing key, so
the triggers guard against mistakes as before, and ``tether audit verify`` against anyone
who drops them.

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("audit_events", "audit_checkpoints")
_PRUNES = "audit_prunes"
_PG_APPEND_ONLY = "tether_audit_append_only"  # migration 0003's: refuses every change
_PG_PRUNABLE = "tether_audit_prunable"
_PRUNED_THROUGH = "COALESCE((SELECT MAX(seq) FROM audit_prunes), 0)"


def upgrade() -> None:
    op.create_table(
        _PRUNES,
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("archive_sha256", sa.String(64), nullable=False),
        sa.Column("events", sa.BigInteger, nullable=False),
        sa.Column("kid", sa.Text, nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_prunes")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"CREATE FUNCTION {_PG_PRUNABLE}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"IF TG_OP = 'DELETE' AND OLD.seq <= {_PRUNED_THROUGH} THEN RETURN OLD; END IF; "
            "RAISE EXCEPTION 'tether: % is append-only', TG_TABLE_NAME "
            "USING ERRCODE = 'insufficient_privilege'; END $$"
        )
        for table in _TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {_PG_PRUNABLE}()"
            )
        op.execute(
            f"CREATE TRIGGER {_PRUNES}_append_only BEFORE UPDATE OR DELETE ON {_PRUNES} "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_APPEND_ONLY}()"
        )
        op.execute(
            f"CREATE TRIGGER {_PRUNES}_no_truncate BEFORE TRUNCATE ON {_PRUNES} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_APPEND_ONLY}()"
        )
        return
    for table in _TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        op.execute(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"WHEN OLD.seq > {_PRUNED_THROUGH} "
            f"BEGIN SELECT RAISE(ABORT, 'tether: {table} is append-only'); END"
        )
    for verb in ("update", "delete"):
        op.execute(
            f"CREATE TRIGGER {_PRUNES}_no_{verb} BEFORE {verb.upper()} ON {_PRUNES} "
            f"BEGIN SELECT RAISE(ABORT, 'tether: {_PRUNES} is append-only'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in _TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                f"FOR EACH ROW EXECUTE FUNCTION {_PG_APPEND_ONLY}()"
            )
        op.drop_table(_PRUNES)
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_PRUNABLE}()")
        return
    for table in _TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        op.execute(
            f"CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table} "
            f"BEGIN SELECT RAISE(ABORT, 'tether: {table} is append-only'); END"
        )
    for verb in ("update", "delete"):
        op.execute(f"DROP TRIGGER IF EXISTS {_PRUNES}_no_{verb}")
    op.drop_table(_PRUNES)
