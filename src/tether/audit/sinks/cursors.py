"""The sink cursors table (migration 0004) and its queries.

Each query takes an ``AsyncConnection`` and leaves the transaction to the caller.

Security and correctness decisions:

* **The cursor only moves forward** (``WHERE last_seq < :seq``): a slow node that
  delivered an old batch cannot rewind a cursor another node already advanced.
* **One deliverer per sink across nodes** through a lease: a node delivers only while its
  ``holder`` id is on the row and the lease has not expired; it renews the lease at each
  batch. A node that dies stops renewing, and another takes over after ``lease_expires_at``.
  Advancing the cursor is conditional on still holding the lease, so a node that lost it
  mid-batch cannot move the cursor (its batch is redelivered: at least once).
* Error text is stored cut to :data:`MAX_ERROR_CHARS` and with its control characters
  written as ``\\xNN`` (:func:`printable`): it comes from receivers, and ``tether audit
  sinks`` shows it in a terminal, where an escape sequence could set the clipboard, retitle
  the window or rewrite the screen.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Table,
    Text,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.store.schema import UTCDateTime, metadata

MAX_ERROR_CHARS: Final = 1000
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1) written as ``\\xNN``."""
    return _CONTROL.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


audit_sink_cursors = Table(
    "audit_sink_cursors",
    metadata,
    Column("name", Text, primary_key=True),
    Column("last_seq", BigInteger, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("last_error_at", UTCDateTime, nullable=True),
    Column("holder", Text, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    CheckConstraint("last_seq >= 0", name="last_seq"),
)


@dataclass(frozen=True, slots=True)
class CursorRow:
    """One sink's cursor as stored."""

    name: str
    last_seq: int
    updated_at: datetime
    last_error: str | None
    last_error_at: datetime | None
    holder: str | None
    lease_expires_at: datetime | None


async def ensure_cursor(conn: AsyncConnection, name: str, start: int, now: datetime) -> int:
    """The sink's cursor, created at ``start`` if it has none; returns ``last_seq``."""
    row = await get_cursor(conn, name)
    if row is not None:
        return row.last_seq
    values = {"name": name, "last_seq": start, "updated_at": now}
    # ON CONFLICT DO NOTHING: another node may create the row at the same moment.
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    await conn.execute(dialect_insert(audit_sink_cursors).values(values).on_conflict_do_nothing())
    created = await get_cursor(conn, name)
    assert created is not None
    return created.last_seq


async def get_cursor(conn: AsyncConnection, name: str) -> CursorRow | None:
    query = select(audit_sink_cursors).where(audit_sink_cursors.c.name == name)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else CursorRow(**row)


async def all_cursors(conn: AsyncConnection) -> list[CursorRow]:
    query = select(audit_sink_cursors).order_by(audit_sink_cursors.c.name)
    return [CursorRow(**row) for row in (await conn.execute(query)).mappings()]


async def acquire_lease(
    conn: AsyncConnection, name: str, holder: str, now: datetime, ttl: float
) -> bool:
    """Take or renew the sink's lease for ``ttl`` seconds; False if another node holds it."""
    table = audit_sink_cursors.c
    free = or_(table.holder.is_(None), table.holder == holder, table.lease_expires_at < now)
    query = (
        update(audit_sink_cursors)
        .where(and_(table.name == name, free))
        .values(holder=holder, lease_expires_at=now + timedelta(seconds=ttl))
    )
    return (await conn.execute(query)).rowcount == 1


async def release_lease(conn: AsyncConnection, name: str, holder: str) -> None:
    table = audit_sink_cursors.c
    query = (
        update(audit_sink_cursors)
        .where(and_(table.name == name, table.holder == holder))
        .values(holder=None, lease_expires_at=None)
    )
    await conn.execute(query)


async def advance_cursor(
    conn: AsyncConnection, name: str, seq: int, now: datetime, holder: str | None
) -> bool:
    """Move the cursor forward to ``seq`` and clear the last error; False if not moved
    (the cursor is already there or beyond, or ``holder`` no longer holds the lease)."""
    table = audit_sink_cursors.c
    conditions = [table.name == name, table.last_seq < seq]
    if holder is not None:
        conditions.append(table.holder == holder)
    query = (
        update(audit_sink_cursors)
        .where(and_(*conditions))
        .values(last_seq=seq, updated_at=now, last_error=None, last_error_at=None)
    )
    return (await conn.execute(query)).rowcount == 1


async def record_error(conn: AsyncConnection, name: str, error: str, now: datetime) -> None:
    query = (
        update(audit_sink_cursors)
        .where(audit_sink_cursors.c.name == name)
        .values(last_error=printable(error[:MAX_ERROR_CHARS]), last_error_at=now)
    )
    await conn.execute(query)
