"""Table definitions, for queries. The migrations, not this module, create the tables."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row per attempt to load the policy directory (startup and every reload).
policy_loads = Table(
    "policy_loads",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("version", String(80), nullable=True),  # None when the set did not load
    Column("loaded_at", DateTime(timezone=True), nullable=False),
    Column("file_count", Integer, nullable=False),
    Column("rule_count", Integer, nullable=True),
    Column("status", String(16), nullable=False),
    Column("error", Text, nullable=True),
    CheckConstraint("status IN ('active', 'rejected')", name="status"),
)
