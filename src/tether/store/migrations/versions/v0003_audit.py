"""audit: the hash-chained event trail and its signed checkpoints.

``audit_events.seq`` is the chain position, given by the writer (never a sequence or an
autoincrement, which could leave gaps on a rolled-back transaction): the primary key makes
two writers that computed the same next position conflict instead of forking the chain.
Both tables are append-only: triggers refuse ``UPDATE`` and ``DELETE`` (and ``TRUNCATE`` on
PostgreSQL), so a bug or an application role cannot rewrite history; someone who drops the
triggers can, and ``tether audit verify`` is what then tells.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)
_TABLES = ("audit_events", "audit_checkpoints")
_PG_FUNCTION = "tether_audit_append_only"


def upgrade() -> None:
    _events()
    _checkpoints()
    if op.get_bind().dialect.name == "postgresql":
        _postgresql_triggers()
    else:
        _sqlite_triggers()


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in _TABLES:
        if not postgresql:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_update")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        op.drop_table(table)
    if postgresql:
        op.execute(f"DROP FUNCTION IF EXISTS {_PG_FUNCTION}()")


def _events() -> None:
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("time", _TS, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("agent", sa.Text, nullable=True),
        sa.Column("runtime", sa.Text, nullable=True),
        sa.Column("task", sa.Text, nullable=True),
        sa.Column("user", sa.Text, nullable=True),
        sa.Column("actor_chain", sa.Text, nullable=False),
        sa.Column("target", sa.Text, nullable=True),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("decision", sa.String(32), nullable=True),
        sa.Column("rule", sa.Text, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("policy_version", sa.Text, nullable=True),
        sa.Column("session_id", sa.Text, nullable=True),
        sa.Column("source_ip", sa.Text, nullable=True),
        sa.Column("bytes_in", sa.BigInteger, nullable=True),
        sa.Column("bytes_out", sa.BigInteger, nullable=True),
        sa.Column("rows", sa.BigInteger, nullable=True),
        sa.Column("duration_ms", sa.Float(precision=53), nullable=True),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_time", "audit_events", ["time"])
    op.create_index("ix_audit_events_agent_seq", "audit_events", ["agent", "seq"])
    op.create_index("ix_audit_events_session_id_seq", "audit_events", ["session_id", "seq"])


def _checkpoints() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("time", _TS, nullable=False),
        sa.Column("kid", sa.Text, nullable=False),
        sa.Column("signature", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_audit_checkpoints")),
    )


def _postgresql_triggers() -> None:
    op.execute(
        f"CREATE FUNCTION {_PG_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'tether: % is append-only', TG_TABLE_NAME "
        "USING ERRCODE = 'insufficient_privilege'; END $$"
    )
    for table in _TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {_PG_FUNCTION}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {_PG_FUNCTION}()"
        )


def _sqlite_triggers() -> None:
    for table in _TABLES:
        for verb in ("update", "delete"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{verb} BEFORE {verb.upper()} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, 'tether: {table} is append-only'); END"
            )
