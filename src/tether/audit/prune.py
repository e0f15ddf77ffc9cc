"""Pruning the start of the audit trail: archive, sign a marker, delete (``tether audit
prune``).

The trail only grows; a node under load writes millions of events a day. A prune moves its
oldest events, up to a signed checkpoint, into an archive file that verifies on its own
(:mod:`tether.audit.archive`), then records a **prune marker** in ``audit_prunes``: the last
event archived, its hash, the archive's SHA-256 and event count, signed with the node's
access-token key like a checkpoint (:func:`tether.audit.checkpoints.sign_prune`). Only then
are the archived events and checkpoints deleted, in batches of their own so that a node
appending meanwhile waits at most one batch. ``tether audit verify`` starts the chain at the
newest marker (its event's hash as the first ``prev_hash``), checks every marker's signature,
and ``tether audit verify --archive FILE`` checks an archive and that a marker names it.

Security decisions:

* **Nothing is pruned from a trail that does not verify**, nor without the master key (the
  signing key is under it, and ``verify`` then trusts only keys it seals): a prune must
  never delete the evidence of tampering, nor launder it into an archive.
* **Only up to a signed checkpoint, and never the last event**: the archive ends at a
  signature, and the chain the writer continues keeps its head in the database.
* **Never past a sink**: every configured SIEM sink must have delivered the events pruned
  (its cursor at or past them), so no receiver misses one; a disabled sink too once it has a
  cursor, since it resumes from it when enabled again.
* **Archive first, durable, never overwritten; marker second; deletion last.** Stopped at
  any point, nothing is lost: before the marker nothing changed; after it the trail verifies
  with the archived events still present (counted as awaiting deletion), and running the
  same prune again finishes the deletion.
* **A marker cannot be made without the signing key**: someone who can write the database can
  neither extend a marker over more events nor plant one (``verify`` reports either), and the
  triggers refuse deleting any event past the newest marker.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from sqlalchemy import delete, func, insert, literal, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.audit.archive import ArchiveExists, write_archive
from tether.audit.canonical import GENESIS
from tether.audit.checkpoints import sign_prune
from tether.audit.schema import audit_checkpoints, audit_events, audit_prunes
from tether.audit.sinks.cursors import audit_sink_cursors
from tether.audit.store import Checkpoint, Prune, checkpoints, prunes
from tether.audit.verify import verify_trail
from tether.crypto.envelope import EnvelopeCipher
from tether.identity.keys import SigningKey

BATCH: Final = 1000  # events deleted per transaction (a node appending waits at most one)
# How far a phase ("archive", "delete") is: (phase, events done, events in all).
Advance = Callable[[str, int, int], None]


class PruneRefused(Exception):
    """Why nothing was pruned (nothing was changed)."""


@dataclass(frozen=True, slots=True)
class Pruned:
    """What :func:`prune` did: events ``first`` to ``through`` archived (``events``; the
    file's ``sha256``) and ``deleted`` rows deleted; ``resumed`` when an earlier run had
    archived them and marked them already, and this one only finished the deletion."""

    first: int
    through: int
    events: int
    sha256: str
    deleted: int
    resumed: bool


async def checkpoint_before(conn: AsyncConnection, moment: datetime) -> int | None:
    """The newest checkpoint made before ``moment`` (the point to prune through to keep
    what came after), or None."""
    query = select(func.max(audit_checkpoints.c.seq)).where(audit_checkpoints.c.time < moment)
    found = (await conn.execute(query)).scalar()
    return None if found is None else int(found)


async def prune(
    engine: AsyncEngine,
    *,
    through: int,
    archive: Path,
    key: SigningKey,
    cipher: EnvelopeCipher,
    head_file: Path | None,
    sinks: Sequence[str],
    now: datetime,
    paused: Sequence[str] = (),
    progress: Callable[[str], None] = lambda _line: None,
    dry_run: bool = False,
    advance: Advance = lambda _phase, _done, _all: None,
) -> Pruned:
    """Archive the events up to ``through`` into ``archive``, mark them pruned, delete them;
    :class:`PruneRefused` (nothing changed) when it may not. ``dry_run``: every check, then
    what it would do (``deleted`` 0, ``sha256`` empty), nothing written."""
    async with engine.connect() as conn:
        done = await prunes(conn)
        last = done[-1] if done else None
        if last is not None and last.seq == through and not dry_run:
            progress(f"events up to {through} are archived and marked already: deleting them")
            deleted = await delete_pruned(engine, through, advance=advance)
            return Pruned(_first(done[:-1]), through, last.events, last.archive_sha256,
                          deleted, resumed=True)  # fmt: skip
        if last is not None and last.seq > through:
            raise PruneRefused(f"the trail is pruned through {last.seq} already")
        _archive_possible(archive)  # before the checks, which read the whole trail
        marks = await _check(conn, through, head_file, cipher, sinks, paused)
        after, prev_hash = (0, GENESIS) if last is None else (last.seq, last.hash)
        if dry_run:
            return Pruned(after + 1, through, through - after, "", 0, resumed=False)
        progress(f"archiving events {after + 1} to {through} into {archive}")
        try:
            written = await write_archive(
                conn, archive, after=after, prev_hash=prev_hash, through=through,
                marks=marks.values(), created=now,
                advance=lambda written: advance("archive", written, through - after),
            )  # fmt: skip
        except ArchiveExists as error:
            raise PruneRefused(str(error)) from None
        except OSError as error:
            raise PruneRefused(f"the archive cannot be written: {error}") from None
    if written.events != through - after:
        raise PruneRefused(f"events {after + 1} to {through} changed while they were archived")
    marker = sign_prune(key, through, marks[through].hash, now, written.sha256, written.events)
    try:
        await _mark(engine, marker, after)
    except PruneRefused:
        archive.unlink(missing_ok=True)  # written by this run, named by no marker
        raise
    progress(f"marked events {after + 1} to {through} pruned; deleting them")
    deleted = await delete_pruned(engine, through, advance=advance)
    return Pruned(after + 1, through, written.events, written.sha256, deleted, resumed=False)


def _archive_possible(archive: Path) -> None:
    """:class:`PruneRefused` when ``archive`` is taken or its directory cannot take it."""
    if archive.exists() or archive.is_symlink():
        raise PruneRefused(f"{archive} exists: an archive is never overwritten")
    directory = archive.parent
    if not directory.is_dir():
        raise PruneRefused(f"the archive's directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PruneRefused(f"the archive's directory {directory} is not writable")


def _first(earlier: Sequence[Prune]) -> int:
    return earlier[-1].seq + 1 if earlier else 1


async def _check(
    conn: AsyncConnection,
    through: int,
    head_file: Path | None,
    cipher: EnvelopeCipher,
    sinks: Sequence[str],
    paused: Sequence[str] = (),
) -> dict[int, Checkpoint]:
    """The checkpoints by seq, once everything a prune requires holds."""
    report = await verify_trail(conn, head_file=head_file, cipher=cipher)
    if not report.ok:
        raise PruneRefused(
            f"the trail does not verify ({len(report.findings) + report.more_findings} "
            "finding(s): see tether audit verify): nothing is pruned from it"
        )
    marks = {mark.seq: mark for mark in await checkpoints(conn)}
    if through not in marks:
        newest = max((seq for seq in marks if seq < (report.last_seq or 0)), default=None)
        hint = f"the newest usable is {newest}" if newest else "there is none yet"
        raise PruneRefused(f"event {through} has no signed checkpoint ({hint})")
    if report.last_seq is None or through >= report.last_seq:
        raise PruneRefused(f"event {through} is the trail's last: the chain goes on from it")
    behind = await _sinks_behind(conn, through, sinks, paused)
    if behind:
        raise PruneRefused("SIEM sink(s) have not delivered these events yet: " + ", ".join(behind))
    return marks


async def _sinks_behind(
    conn: AsyncConnection, through: int, sinks: Iterable[str], paused: Iterable[str] = ()
) -> list[str]:
    """The sinks that have not delivered up to ``through``: every enabled one, and every
    disabled (``paused``) one that has a cursor. A disabled sink keeps its cursor to resume
    from it; pruned past, it resumed at the first event left, silently skipping the pruned
    ones (a gap its receiver never learns of). Removing it from the configuration is how to
    prune past it."""
    rows = await conn.execute(select(audit_sink_cursors.c.name, audit_sink_cursors.c.last_seq))
    delivered = {str(name): int(seq) for name, seq in rows}
    behind = [f"{name} (at {delivered.get(name, 0)})" for name in sinks
              if delivered.get(name, 0) < through]  # fmt: skip
    return behind + [
        f"{name} (at {delivered[name]}, disabled: remove it from audit.sinks to prune past it)"
        for name in paused
        if name in delivered and delivered[name] < through
    ]


async def _mark(engine: AsyncEngine, marker: Prune, after: int) -> None:
    """Record ``marker``, unless another prune got there first (checked in the inserting
    statement itself, under a table lock on PostgreSQL: two prunes never both mark)."""
    newest = select(func.coalesce(func.max(audit_prunes.c.seq), 0)).scalar_subquery()
    row = select(*[literal(getattr(marker, column.name), column.type).label(column.name)
                   for column in audit_prunes.c]).where(newest == after)  # fmt: skip
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("LOCK TABLE audit_prunes IN SHARE ROW EXCLUSIVE MODE"))
        names = [column.name for column in audit_prunes.c]
        result = await conn.execute(insert(audit_prunes).from_select(names, row))
        if result.rowcount != 1:
            raise PruneRefused("another prune ran meanwhile: run this one again")


async def delete_pruned(
    engine: AsyncEngine,
    through: int,
    batch: int = BATCH,
    advance: Advance = lambda _phase, _done, _all: None,
) -> int:
    """Delete the events and checkpoints up to ``through`` (marked pruned), ``batch`` events
    a transaction, calling ``advance("delete", ...)`` after each; how many rows."""
    events = 0
    first: int | None = None
    while True:
        async with engine.begin() as conn:
            lowest = (await conn.execute(select(func.min(audit_events.c.seq)))).scalar()
            if lowest is None or lowest > through:
                break
            first = int(lowest) if first is None else first
            upper = min(int(lowest) + batch - 1, through)
            result = await conn.execute(delete(audit_events).where(audit_events.c.seq <= upper))
            events += result.rowcount or 0
        advance("delete", events, through - first + 1)
    async with engine.begin() as conn:
        result = await conn.execute(
            delete(audit_checkpoints).where(audit_checkpoints.c.seq <= through)
        )
        return events + (result.rowcount or 0)
