"""Giving a SQLite database's free pages back to the file system (``tether store vacuum``).

SQLite keeps the pages that deleted rows leave (after ``tether audit prune``, the records'
retention, a revocation prune) for its own later writes: the file never shrinks by itself.
``VACUUM`` rebuilds it without them. PostgreSQL's autovacuum reuses such space on its own;
``VACUUM FULL`` is its tool for giving it back.

Security decisions:

* **Never under a serving node**: the command holds the database's node lock
  (:mod:`tether.store.nodelock`) for the whole rebuild, so it refuses while ``tether
  serve`` runs (a rebuild would hold SQLite's exclusive lock for its whole length, and the
  node's audit appends would fail meanwhile: refused requests), and no node starts during it.
* **Nothing is lost on failure**: ``VACUUM`` is one transaction; a failure (a full disk,
  an interruption) leaves the database as it was. The space it needs is checked first (the
  rebuilt copy in the temporary directory and, in WAL mode, the same again in the
  write-ahead log), so a disk that cannot hold it is refused before anything is written.
* **Rows are unchanged**: ``VACUUM`` keeps every column, and may only renumber SQLite's
  implicit ``rowid`` of a table without an ``INTEGER PRIMARY KEY``, which nothing in
  Tether reads (rows are found by their declared keys), so seals, the audit chain and
  references verify as before (``tether store verify``, ``tether audit verify``).
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tether.store.database import NotSqliteFile, sqlite_file_of

BUSY_TIMEOUT_SECONDS = 30.0
Free = Callable[[Path], int]


class VacuumError(Exception):
    """The database was not vacuumed; the message says why (nothing was changed)."""


@dataclass(frozen=True, slots=True)
class Vacuumed:
    """The database's size on disk (its file and write-ahead log), before and after."""

    path: Path
    before: int
    after: int


def sqlite_database(database_url: str) -> Path:
    """The file of a SQLite database URL; :class:`VacuumError` for another database."""
    elsewhere = (
        "its autovacuum reuses free space; to give it back to the file system, run VACUUM "
        "FULL with PostgreSQL's tools (docs/operations.md)"
    )
    try:
        return sqlite_file_of(database_url, elsewhere)
    except NotSqliteFile as error:
        raise VacuumError(str(error)) from None


def on_disk(path: Path) -> int:
    """The bytes of ``path`` and its write-ahead log."""
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def space_problem(size: int, free_here: int, free_temp: int, same_device: bool) -> str | None:
    """Why a rebuild of ``size`` bytes may not fit, or None: it writes a copy of the
    database in the temporary directory, then the same again into the write-ahead log next
    to the database."""
    places = [("on the database's disk", free_here, size * 2 if same_device else size)]
    if not same_device:
        places.append(("in the temporary directory", free_temp, size))
    for where, free, needed in places:
        if free < needed:
            return f"it needs up to {needed} bytes free {where}, {free} are"
    return None


def _free(path: Path) -> int:
    return shutil.disk_usage(path).free


def vacuum_sqlite(path: Path, free: Free = _free) -> Vacuumed:
    """Rebuild the SQLite database at ``path`` without its free pages (the caller holds the
    node lock); its size before and after."""
    if not path.is_file():
        raise VacuumError(f"{path}: no such database")
    before = on_disk(path)
    temp = Path(tempfile.gettempdir())
    same_device = temp.stat().st_dev == path.parent.stat().st_dev
    problem = space_problem(before, free(path.parent), free(temp), same_device)
    if problem is not None:
        raise VacuumError(f"not enough space to vacuum {path}: {problem}")
    try:
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS)) as database:
            database.isolation_level = None  # VACUUM cannot run inside a transaction
            database.execute("VACUUM")
            database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.Error as error:
        raise VacuumError(f"{path}: VACUUM failed, the database is unchanged: {error}") from None
    return Vacuumed(path, before, on_disk(path))
