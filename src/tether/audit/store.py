"""Reading and writing audit rows: the queries behind the log, search, verify and sinks.

Each function takes an ``AsyncConnection`` and leaves the transaction to the caller, like
the rest of :mod:`tether.store`. Readers (:func:`events_after`, :func:`search_events`)
return :class:`~tether.audit.events.AuditEvent` values in chain (``seq``) order; the only
writer is :class:`tether.audit.log.AuditLog` (its SQL is in :mod:`tether.audit.writers`);
:func:`event_row` is the row of an event, for tests and tools that build one.

:func:`events_after` is the stable cursor API of the sinks: an event is visible to it only
once its batch has committed, and since ``seq`` is assigned under the chain lock in commit
order, a reader that keeps the highest ``seq`` it saw never skips one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, RowMapping, and_, func, inspect, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.audit.canonical import json_text
from tether.audit.events import AuditEvent
from tether.audit.schema import audit_checkpoints, audit_events, audit_prunes

# Columns that hold an event's scalar fields under the field's own name.
_SCALARS = (
    "id", "time", "kind", "agent", "runtime", "task", "user", "target", "decision", "rule",
    "reason", "policy_version", "session_id", "source_ip", "bytes_in", "bytes_out", "rows",
    "duration_ms", "prev_hash", "hash",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last event of the chain: its ``seq`` (0 when empty) and ``hash``."""

    seq: int
    hash: str | None


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed checkpoint: ``signature`` (base64url Ed25519) by key ``kid`` over the
    canonical statement of ``(seq, hash, time)``."""

    seq: int
    hash: str
    time: datetime
    kid: str
    signature: str


@dataclass(frozen=True, slots=True)
class Prune:
    """A signed prune marker: events up to ``seq`` (whose hash was ``hash``) were archived
    in a file of SHA-256 ``archive_sha256`` holding ``events`` events, then deleted."""

    seq: int
    hash: str
    time: datetime
    archive_sha256: str
    events: int
    kid: str
    signature: str


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What :func:`search_events` keeps. String filters match exactly, or as a pattern
    when they hold ``*`` (any run of characters); ``since`` is inclusive, ``until`` not."""

    agent: str | None = None
    runtime: str | None = None
    task: str | None = None
    user: str | None = None
    target: str | None = None
    kind: str | None = None
    decision: str | None = None
    session_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


# --- rows of events --------------------------------------------------------------------------


def event_row(event: AuditEvent) -> dict[str, Any]:
    """The row of a chained event (``seq``, ``prev_hash`` and ``hash`` set)."""
    row = {name: getattr(event, name) for name in _SCALARS}
    row["seq"] = event.seq
    row["actor_chain"] = json_text(event.actor_chain)
    row["action"] = json_text(event.action)
    row["detail"] = json_text(event.detail)
    return row


# --- reading -----------------------------------------------------------------------------------


async def chain_head(conn: AsyncConnection) -> ChainHead:
    """The last event's ``seq`` and ``hash``; ``ChainHead(0, None)`` for an empty trail."""
    query = select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc())
    row = (await conn.execute(query.limit(1))).first()
    return ChainHead(0, None) if row is None else ChainHead(row[0], row[1])


async def last_checkpoint(conn: AsyncConnection) -> Checkpoint | None:
    query = select(audit_checkpoints).order_by(audit_checkpoints.c.seq.desc()).limit(1)
    row = (await conn.execute(query)).mappings().first()
    return None if row is None else _checkpoint(row)


async def checkpoints(conn: AsyncConnection) -> list[Checkpoint]:
    """Every checkpoint, by ``seq``."""
    query = select(audit_checkpoints).order_by(audit_checkpoints.c.seq)
    return [_checkpoint(row) for row in (await conn.execute(query)).mappings()]


async def prunes(conn: AsyncConnection) -> list[Prune]:
    """Every prune marker, oldest first (none on a database from before migration 0026)."""
    if not await conn.run_sync(lambda sync: inspect(sync).has_table(audit_prunes.name)):
        return []
    rows = (await conn.execute(select(audit_prunes).order_by(audit_prunes.c.seq))).mappings()
    return [Prune(**dict(row)) for row in rows]


async def events_after(
    conn: AsyncConnection, after_seq: int, limit: int = 1000
) -> list[AuditEvent]:
    """Up to ``limit`` committed events with ``seq > after_seq``, in ``seq`` order."""
    query = (
        select(audit_events)
        .where(audit_events.c.seq > after_seq)
        .order_by(audit_events.c.seq)
        .limit(limit)
    )
    return [event_from_row(row) for row in (await conn.execute(query)).mappings()]


async def search_events(
    conn: AsyncConnection,
    where: EventFilter,
    *,
    limit: int = 100,
    after_seq: int | None = None,
    before_seq: int | None = None,
) -> list[AuditEvent]:
    """Events matching ``where``, in ``seq`` order: the first ``limit`` after ``after_seq``
    when it is given, else the last ``limit`` (before ``before_seq`` if given)."""
    conditions = _conditions(where, conn.dialect.name)
    if after_seq is not None:
        conditions.append(audit_events.c.seq > after_seq)
    if before_seq is not None:
        conditions.append(audit_events.c.seq < before_seq)
    seq = audit_events.c.seq
    order = seq if after_seq is not None else seq.desc()
    query = select(audit_events).where(and_(True, *conditions)).order_by(order).limit(limit)
    events = [event_from_row(row) for row in (await conn.execute(query)).mappings()]
    return events if after_seq is not None else events[::-1]


async def follow(
    conn: AsyncConnection, where: EventFilter, after_seq: int, limit: int = 1000
) -> tuple[list[AuditEvent], int]:
    """The next matches after ``after_seq`` and the cursor to follow from.

    The cursor moves past the events that did not match too: the head is read first, and
    every event up to it had committed by then (``seq`` follows commit order), so the
    search saw them all. A full page moves it only to its last event.
    """
    head = (await chain_head(conn)).seq
    found = await search_events(conn, where, limit=limit, after_seq=after_seq)
    last = found[-1].seq if found else after_seq
    assert last is not None
    return found, last if len(found) == limit else max(last, head, after_seq)


async def count_events(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(audit_events))).scalar_one())


def _conditions(where: EventFilter, dialect: str) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    for name in ("agent", "runtime", "task", "user", "target", "kind", "decision", "session_id"):
        value = getattr(where, name)
        if value is not None:
            conditions.append(_match(audit_events.c[name], value, dialect))
    if where.since is not None:
        conditions.append(audit_events.c.time >= where.since)
    if where.until is not None:
        conditions.append(audit_events.c.time < where.until)
    return conditions


def _match(column: Any, pattern: str, dialect: str) -> ColumnElement[bool]:
    """Equality, or a case-sensitive pattern where ``*`` is any run of characters (and no
    other character is special) on both backends: SQLite's ``LIKE`` ignores case, so it
    gets ``GLOB`` with ``?`` and ``[`` bracketed; PostgreSQL gets ``LIKE`` escaped."""
    if "*" not in pattern:
        return column == pattern  # type: ignore[no-any-return]
    if dialect == "sqlite":
        globbed = pattern.replace("[", "[[]").replace("?", "[?]")
        return column.op("GLOB")(globbed)  # type: ignore[no-any-return]
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%"), escape="\\")  # type: ignore[no-any-return]


# --- rows --------------------------------------------------------------------------------------


def event_from_row(row: RowMapping | Mapping[str, Any]) -> AuditEvent:
    """The event a row holds; ``ValueError`` (an ``EventError`` or a JSON error) if the row
    cannot be one."""
    fields = {name: row[name] for name in _SCALARS}
    if isinstance(fields["time"], str):  # a raw SQLite value (a text() query)
        fields["time"] = _sqlite_time(fields["time"])
    return AuditEvent(
        seq=row["seq"],
        actor_chain=tuple(_json(row["actor_chain"], list)),
        action=_json(row["action"], dict),
        detail=_json(row["detail"], dict),
        **fields,
    )


def sqlite_time_text(moment: datetime) -> str:
    """``moment`` (aware) as SQLAlchemy stores it in SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff``
    UTC, the one text of each instant (``verify`` refuses any other)."""
    t = moment.astimezone(UTC)
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d}.{t.microsecond:06d}"
    )


def _sqlite_time(value: str) -> datetime:
    """A time as SQLAlchemy stores it in SQLite (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC)."""
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        raise ValueError(f"time {value!r} carries an offset; SQLite times are stored in UTC")
    return moment.replace(tzinfo=UTC)


def _json(text: str, kind: type[list[Any]] | type[dict[str, Any]]) -> Any:
    value = json.loads(text)
    if not isinstance(value, kind):
        raise ValueError(f"expected a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def _checkpoint(row: RowMapping) -> Checkpoint:
    return Checkpoint(
        seq=row["seq"],
        hash=row["hash"],
        time=row["time"],
        kid=row["kid"],
        signature=row["signature"],
    )
