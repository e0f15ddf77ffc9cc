"""The notification outbox (migration 0007) and its queries.

Each query takes an ``AsyncConnection`` and leaves the transaction to the caller, so a
notification is written in the same transaction as the access request that causes it:
either both are committed or neither is, and a restart loses nothing that was committed.

Security and correctness decisions:

* **One deliverer per entry across nodes** through a lease: :func:`claim` sets ``holder``
  and ``lease_expires_at`` only on an entry that is due, neither delivered nor given up,
  and not leased by a live holder — one conditional ``UPDATE``, which PostgreSQL's row lock
  and SQLite's write lock serialise, so two nodes never both win the same entry. The lease
  outlives one attempt (the webhook's timeout and a margin), so in the normal case each
  entry is delivered exactly once; a node that dies or stalls past its lease after
  sending lets another node send again: delivery is **at least once** (receivers
  deduplicate on ``X-Tether-Delivery``).
* A result is recorded whatever the lease says (:func:`mark_delivered`): a delivery that
  happened is never retried for bookkeeping reasons.
* The row holds the body and the webhook's group and URL, never its signing secret; the
  secret comes from the configuration at delivery time.
* Error text from receivers is stored cut to :data:`MAX_ERROR_CHARS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    Index,
    Integer,
    String,
    Table,
    Text,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.store.schema import UTCDateTime, metadata

MAX_ERROR_CHARS: Final = 1000

notification_outbox = Table(
    "notification_outbox",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("request_id", String(40), nullable=False),
    Column("channel", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("payload", JSON, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    Column("failed_at", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("holder", Text, nullable=True),
    Column("lease_expires_at", UTCDateTime, nullable=True),
    CheckConstraint("attempts >= 0", name="attempts"),
    Index("ix_notification_outbox_next_attempt_at", "next_attempt_at"),
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One notification as stored."""

    id: str
    request_id: str
    channel: str
    url: str
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    delivered_at: datetime | None
    failed_at: datetime | None
    last_error: str | None
    holder: str | None
    lease_expires_at: datetime | None


async def enqueue(conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert new entries (``id``, ``request_id``, ``channel``, ``url``, ``payload``,
    ``created_at``); each is due at once."""
    for row in rows:
        values = {**row, "attempts": 0, "next_attempt_at": row["created_at"]}
        await conn.execute(insert(notification_outbox).values(values))


async def due_ids(conn: AsyncConnection, now: datetime, limit: int) -> list[str]:
    """Ids of entries due and not leased by a live holder, oldest due first."""
    table = notification_outbox.c
    query = (
        select(table.id)
        .where(_claimable(now))
        .order_by(table.next_attempt_at, table.id)
        .limit(limit)
    )
    return list(await conn.scalars(query))


def _claimable(now: datetime) -> Any:
    table = notification_outbox.c
    return and_(
        table.delivered_at.is_(None),
        table.failed_at.is_(None),
        table.next_attempt_at <= now,
        or_(table.holder.is_(None), table.lease_expires_at < now),
    )


async def claim(
    conn: AsyncConnection, entry_id: str, holder: str, now: datetime, ttl: float
) -> Entry | None:
    """Lease the entry to ``holder`` for ``ttl`` seconds if it is still claimable."""
    query = (
        update(notification_outbox)
        .where(and_(notification_outbox.c.id == entry_id, _claimable(now)))
        .values(holder=holder, lease_expires_at=now + timedelta(seconds=ttl))
    )
    if (await conn.execute(query)).rowcount != 1:
        return None
    return await get(conn, entry_id)


async def get(conn: AsyncConnection, entry_id: str) -> Entry | None:
    query = select(notification_outbox).where(notification_outbox.c.id == entry_id)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else Entry(**row)


async def for_request(conn: AsyncConnection, request_id: str) -> list[Entry]:
    """The entries of one access request, oldest first (for operators and tests)."""
    table = notification_outbox.c
    query = (
        select(notification_outbox)
        .where(table.request_id == request_id)
        .order_by(table.created_at, table.id)
    )
    return [Entry(**row) for row in (await conn.execute(query)).mappings()]


async def mark_delivered(
    conn: AsyncConnection, entry_id: str, attempts: int, now: datetime
) -> None:
    await conn.execute(
        update(notification_outbox)
        .where(notification_outbox.c.id == entry_id)
        .values(delivered_at=now, attempts=attempts, last_error=None, holder=None,
                lease_expires_at=None)
    )  # fmt: skip


async def reschedule(
    conn: AsyncConnection,
    entry_id: str,
    holder: str,
    attempts: int,
    error: str,
    retry_at: datetime | None,
    now: datetime,
) -> None:
    """Record a failed attempt: due again at ``retry_at``, or given up when it is None.
    Only the lease holder reschedules (a node that lost its lease leaves the entry alone)."""
    table = notification_outbox.c
    values: dict[str, Any] = {
        "attempts": attempts, "last_error": error[:MAX_ERROR_CHARS], "holder": None,
        "lease_expires_at": None,
    }  # fmt: skip
    if retry_at is None:
        values["failed_at"] = now
    else:
        values["next_attempt_at"] = retry_at
    await conn.execute(
        update(notification_outbox)
        .where(and_(table.id == entry_id, table.holder == holder, table.delivered_at.is_(None)))
        .values(values)
    )


async def prune(conn: AsyncConnection, before: datetime) -> int:
    """Delete entries delivered or given up before ``before``; how many."""
    table = notification_outbox.c
    query = delete(notification_outbox).where(
        or_(table.delivered_at < before, table.failed_at < before)
    )
    return int((await conn.execute(query)).rowcount)
