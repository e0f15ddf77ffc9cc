"""Recordings past a retention removed, a whole UTC day at a time (``tether sessions prune``).

Recordings are files, one directory per UTC day a session started
(``<root>/YYYY/MM/DD/``, :mod:`tether.audit.recordings`): :func:`plan` picks the days that
ended before a cutoff, :func:`remove` deletes them. The audit trail keeps each session's
events (``tether audit prune`` is its own retention); ``tether sessions list`` then shows
those sessions as ``no recording``.

Security decisions:

* **Only what the recorder wrote**: a day is a directory ``YYYY/MM/DD`` of digits that is
  a real date, reached without following a symbolic link (a link is reported and left, as
  is anything else under the root); the empty month and year directories left behind are
  removed too, nothing else.
* **Never a recording still being written**: the cutoff must be at least
  :data:`MIN_AGE` ago, and a day holding a session without its summary (still open, or
  cut by a crash) whose files changed within :data:`MIN_AGE` is kept and reported
  (``in use``), whatever the cutoff.
* **Whole days**: a day is removed only when it ended at or before the cutoff, so a session
  is never half removed (its cast, transfers and summary live in one directory).
* **A failure removes nothing more of that day than the file system did**: each day is
  removed on its own; one that fails is reported with the reason, the others go on, and the
  command exits 1.
"""

from __future__ import annotations

import shutil
import stat
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final

from tether.audit.recordings import (
    CAST_SUFFIX,
    SUMMARY_SUFFIX,
    TRANSFERS_SUFFIX,
    being_written,
)

MIN_AGE: Final = timedelta(days=1)
IN_USE: Final = "in use: a session without its summary wrote within the last day"


class PruneRefused(Exception):
    """The prune cannot run as asked; the message says why (nothing was removed)."""


@dataclass(frozen=True, slots=True)
class Day:
    """One day directory of recordings."""

    day: date
    path: Path
    sessions: int  # casts in it
    bytes: int
    kept: str | None = None  # why it stays (in use, a symbolic link), None when removed


@dataclass(frozen=True, slots=True)
class Removed:
    day: Day
    error: str | None = None  # why it could not be removed


def plan(root: Path, before: datetime, now: datetime) -> list[Day]:
    """The days under ``root`` that ended at or before ``before``, oldest first (those that
    must stay have ``kept`` set); :class:`PruneRefused` for a cutoff too recent."""
    if before > now - MIN_AGE:
        raise PruneRefused(
            f"the cutoff {before.isoformat()} is less than a day ago: the recordings of the "
            "last day may belong to sessions still open"
        )
    if not root.is_dir():
        raise PruneRefused(f"{root}: no recordings directory")
    days = []
    for day, path in _days(root):
        if datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1) > before:
            continue
        days.append(_day(day, path, now))
    return days


def remove(root: Path, days: list[Day]) -> list[Removed]:
    """Delete the days of :func:`plan` not kept, then the month and year directories they
    left empty."""
    done = []
    for day in days:
        if day.kept is not None:
            continue
        try:
            shutil.rmtree(day.path)
        except OSError as error:
            done.append(Removed(day, f"{error.strerror or error}"))
            continue
        done.append(Removed(day))
        for parent in (day.path.parent, day.path.parent.parent):
            if parent == root:
                break
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
    return done


def _days(root: Path) -> list[tuple[date, Path]]:
    found = []
    for year in _numbered(root, 4):
        for month in _numbered(year, 2):
            for day in _numbered(month, 2):
                try:
                    when = date(int(year.name), int(month.name), int(day.name))
                except ValueError:
                    continue  # not a date: not the recorder's
                found.append((when, day))
    return sorted(found)


def _numbered(directory: Path, width: int) -> list[Path]:
    """The entries of ``directory`` named by ``width`` digits (links included: :func:`_day`
    reports them; a link above a day is not followed)."""
    if directory.is_symlink():
        return []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return []
    return [e for e in entries if len(e.name) == width and e.name.isdigit()]


def _day(day: date, path: Path, now: datetime) -> Day:
    if path.is_symlink() or not path.is_dir():
        return Day(day, path, 0, 0, kept="not a directory of recordings (a symbolic link?)")
    try:
        entries = list(path.iterdir())
    except OSError as error:
        return Day(day, path, 0, 0, kept=f"cannot be read: {error.strerror or error}")
    sessions = size = 0
    open_recent = False
    recent = (now - MIN_AGE).timestamp()
    for entry in entries:
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        size += info.st_size
        if entry.name.endswith(CAST_SUFFIX):
            sessions += 1
            summary = entry.with_name(entry.name.removesuffix(CAST_SUFFIX) + SUMMARY_SUFFIX)
            if not summary.exists() and (_changed_since(entry, recent) or being_written(entry)):
                open_recent = True  # a recorder writes it (however long it was quiet)
    if open_recent:
        return Day(day, path, sessions, size, kept=IN_USE)
    return Day(day, path, sessions, size)


def _changed_since(cast: Path, moment: float) -> bool:
    """Whether the cast of a session, or its transfer records, changed after ``moment``."""
    session = cast.name.removesuffix(CAST_SUFFIX)
    for path in (cast, cast.with_name(session + TRANSFERS_SUFFIX)):
        try:
            if path.lstat().st_mtime > moment:
                return True
        except OSError:
            continue
    return False
