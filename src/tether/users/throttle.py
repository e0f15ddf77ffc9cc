"""The sign-in throttle, in the store (table ``login_failures``, migration 0011).

Each password sign-in first counts itself for the name it presents, in one atomic
statement that also answers the count:

    INSERT INTO login_failures (key, attempts, window_start) VALUES (:key, 1, :now)
    ON CONFLICT (key) DO UPDATE SET
        attempts = CASE WHEN window_start <= :cutoff THEN 1 ELSE attempts + 1 END,
        window_start = CASE WHEN window_start <= :cutoff THEN :now ELSE window_start END
    RETURNING attempts

and is refused, before any password is checked, when that count passes the limit. A
successful sign-in deletes the name's row (with every row whose window has passed), so
what is left counts the failures since the window began. Security decisions:

* **Shared by every node.** Nodes on one PostgreSQL count in one row; an attacker spreading
  guesses over N nodes behind a load balancer gets no more than on one node.
* **Counted before the check.** The count is taken before the slow password hash runs,
  and the row lock serialises concurrent attempts, so a burst of parallel guesses cannot
  all pass the limit before the first failure is recorded.
* **A fixed window from the first failure**: ``MAX_FAILURES`` attempts that do not succeed
  within ``FAILURE_WINDOW`` seconds of the first (:mod:`tether.users.service`) refuse the
  name until ``FAILURE_WINDOW`` seconds after that first one.
* **Keyed by a digest** of the name as presented, so a password typed into the name field
  is not stored in clear, and the key has a fixed size whatever was sent.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import Column, Index, Integer, String, Table, case, delete, literal, or_
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.store.identity import upsert_insert
from tether.store.schema import UTCDateTime, metadata

login_failures = Table(
    "login_failures",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("window_start", UTCDateTime, nullable=False),
    Index("ix_login_failures_window_start", "window_start"),
)


def name_key(name: str) -> str:
    """The row key of a presented user name: the hex SHA-256 of its UTF-8."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


async def count_attempt(conn: AsyncConnection, name: str, now: datetime, window: float) -> int:
    """Count one sign-in attempt for ``name``; the attempts in its window, this one included."""
    table = login_failures
    expired = table.c.window_start <= now - timedelta(seconds=window)
    insert = upsert_insert(conn, table).values(key=name_key(name), attempts=1, window_start=now)
    stmt = insert.on_conflict_do_update(
        index_elements=[table.c.key],
        set_={
            "attempts": case((expired, 1), else_=table.c.attempts + 1),
            "window_start": case((expired, literal(now, UTCDateTime)), else_=table.c.window_start),
        },
    ).returning(table.c.attempts)
    return int((await conn.execute(stmt)).scalar_one())


async def clear(conn: AsyncConnection, name: str, now: datetime, window: float) -> None:
    """Forget the attempts of ``name`` (it signed in), and every window that has passed."""
    expired = login_failures.c.window_start <= now - timedelta(seconds=window)
    await conn.execute(
        delete(login_failures).where(or_(login_failures.c.key == name_key(name), expired))
    )
