"""Sessions as the audit trail knows them: ``session.start`` and ``session.end`` events.

``tether sessions list`` merges these with the recordings, since only terminals and
transfers are recorded while every front-end's sessions are audited. The database is
opened read-only in spirit (no migration is run): a node that never wrote an audit event
has nothing to list, and an old schema is reported, not upgraded, by a listing command.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.audit.events import AuditEvent
from tether.audit.recordings import session_of
from tether.audit.store import EventFilter, search_events
from tether.store.database import StoreError, create_engine

MAX_SESSIONS: Final = 10_000


class AuditIndexError(Exception):
    """The audit trail could not be read; the message says why."""


@dataclass(frozen=True, slots=True)
class AuditedSession:
    """One session from its start event, and its end event when it has ended."""

    session_id: str
    started_at: datetime
    start: AuditEvent
    end: AuditEvent | None

    def as_row(self) -> dict[str, Any]:
        protocol = self.start.action.get("protocol")
        return {
            "session_id": self.session_id,
            "started_at": self.started_at.isoformat(),
            "protocol": protocol if isinstance(protocol, str) else None,
            "agent": self.start.agent,
            "user": self.start.user,
            "target": self.start.target,
            "duration": None
            if self.end is None or self.end.duration_ms is None
            else round(self.end.duration_ms / 1000, 3),
            "output_bytes": None,
            "truncated": None,
            "exit_status": None,
        }


async def _search(
    url: str, *filters: EventFilter, limit: int = MAX_SESSIONS, every: bool = False
) -> list[list[AuditEvent]]:
    """The events of each filter (the last ``limit`` each, or with ``every`` all of them,
    read ``limit`` at a time), read without running a migration; no events when a SQLite
    database does not exist yet. :class:`AuditIndexError` if the trail cannot be read."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() == "sqlite" and database and not Path(database).exists():
        return [[] for _ in filters]
    try:
        engine = create_engine(url)
    except StoreError as error:
        raise AuditIndexError(str(error)) from None
    try:
        async with engine.connect() as conn:
            if not every:
                return [await search_events(conn, found, limit=limit) for found in filters]
            return [await _every(conn, found, limit) for found in filters]
    except (SQLAlchemyError, OSError, ValueError) as error:
        raise AuditIndexError(str(error).splitlines()[0] if str(error) else "error") from None
    finally:
        await engine.dispose()


async def _every(conn: AsyncConnection, where: EventFilter, page: int) -> list[AuditEvent]:
    """Every event of ``where`` in ``seq`` order, ``page`` at a time: a check that reads
    only the last page would miss what an agent buried under many newer events."""
    found: list[AuditEvent] = []
    after = -(2**63)
    while True:
        events = await search_events(conn, where, limit=page, after_seq=after)
        found.extend(events)
        if len(events) < page:
            return found
        after = events[-1].seq if events[-1].seq is not None else after + page


async def audited_sessions(url: str, limit: int = MAX_SESSIONS) -> list[AuditedSession]:
    """The last ``limit`` sessions started, oldest first; :class:`AuditIndexError` if the
    trail cannot be read (an empty list when a SQLite database does not exist yet)."""
    starts, ends = await _search(
        url, EventFilter(kind="session.start"), EventFilter(kind="session.end"), limit=limit
    )
    ended = {event.session_id: event for event in ends if event.session_id is not None}
    return [
        AuditedSession(event.session_id, event.time, event, ended.get(event.session_id))
        for event in starts
        if event.session_id is not None
    ]


async def recording_digests(url: str, recording_id: str) -> list[str]:
    """The SHA-256 values the audit trail holds for the recording ``recording_id``
    (``<session id>.<channel>``: the ``detail.recording`` of its ``ssh.command`` events);
    :class:`AuditIndexError` if the trail cannot be read."""
    session_id = session_of(recording_id)
    where = EventFilter(kind="ssh.command", session_id=session_id)
    (events,) = await _search(url, where, every=True)
    digests = []
    for event in events:
        recording = event.detail.get("recording")
        if isinstance(recording, Mapping) and recording.get("id") == recording_id:
            digest = recording.get("sha256")
            if isinstance(digest, str):
                digests.append(digest)
    return digests


Transfer = tuple[str, str, int, str]  # direction (upload, download), path, size, sha256


async def audited_transfers(url: str, recording_id: str) -> list[Transfer]:
    """The file transfers the audit trail holds for the session of ``recording_id``
    (``file.transfer`` events of a read or write with a digest), as a recording's
    ``transfers.jsonl`` lists them; :class:`AuditIndexError` if the trail cannot be read."""
    session_id = session_of(recording_id)
    where = EventFilter(kind="file.transfer", session_id=session_id)
    (events,) = await _search(url, where, every=True)
    found: list[Transfer] = []
    for event in events:
        action = event.action
        op, path = action.get("op"), action.get("path")
        size, digest = action.get("size"), action.get("sha256")
        if (
            op in _DIRECTIONS
            and isinstance(path, str)
            and isinstance(size, int)
            and isinstance(digest, str)
        ):
            found.append((_DIRECTIONS[op], path, size, digest))
    return found


_DIRECTIONS: Final = {"write": "upload", "read": "download"}
