"""The DPoP replay table (migration 0009), shared by every node on one PostgreSQL.

:func:`claim` is the shared half of the replay check :mod:`tether.identity.replay`
describes: one statement,

    INSERT INTO dpop_replay (key, expires_at) VALUES (:key, :expires_at)
    ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at
        WHERE dpop_replay.expires_at <= :now
    RETURNING key

A row back means the key was new (or its earlier use had expired) and is now recorded; no
row back means an unexpired row already held it: a replay. PostgreSQL's unique index and
row lock serialise two concurrent claims of one key, on one node or two, so exactly one of
them gets the row. ``now`` is the caller's clock, as everywhere in the store, not the
database's.

Only PostgreSQL stores call it (``is_shared``): a SQLite database is served by one process,
which keeps its replay cache in memory. :func:`prune` deletes expired rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Column, Index, String, Table, delete
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.store.schema import UTCDateTime, metadata

dpop_replay = Table(
    "dpop_replay",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("expires_at", UTCDateTime, nullable=False),
    Index("ix_dpop_replay_expires_at", "expires_at"),
)


def is_shared(engine: AsyncEngine) -> bool:
    """Whether nodes may share this database, so replays must be checked in it."""
    return engine.dialect.name == "postgresql"


async def claim(conn: AsyncConnection, key: str, expires_at: datetime, now: datetime) -> bool:
    """Record ``key`` until ``expires_at``; ``False`` if it is recorded and unexpired (replay)."""
    insert = pg_insert(dpop_replay).values(key=key, expires_at=expires_at)
    statement = insert.on_conflict_do_update(
        index_elements=[dpop_replay.c.key],
        set_={"expires_at": insert.excluded.expires_at},
        where=dpop_replay.c.expires_at <= now,
    ).returning(dpop_replay.c.key)
    return (await conn.execute(statement)).first() is not None


async def prune(conn: AsyncConnection, now: datetime) -> int:
    """Delete expired entries; how many."""
    result = await conn.execute(delete(dpop_replay).where(dpop_replay.c.expires_at <= now))
    return int(result.rowcount)
