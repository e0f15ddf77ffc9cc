"""A consistent copy of a SQLite database while a node writes to it (``tether store
backup``): SQLite's online backup, the same as ``sqlite3 DB ".backup FILE"``, one snapshot
of every table. PostgreSQL databases are backed up with PostgreSQL's own tools.

Security decisions: the copy holds what the database holds (ciphertexts, seals, the audit
trail, token digests), so it is created with mode 0600 and never over an existing file; a
copy that fails halfway is removed, never left looking like a backup.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

from tether.store.database import NotSqliteFile, sqlite_file_of

BUSY_TIMEOUT_SECONDS = 30.0


class BackupError(Exception):
    """The copy could not be made; the message says why."""


def sqlite_path(database_url: str) -> Path:
    """The file of a SQLite database URL; :class:`BackupError` for another database."""
    elsewhere = "back it up with its own tools (pg_dump, a base backup; docs/operations.md)"
    try:
        return sqlite_file_of(database_url, elsewhere)
    except NotSqliteFile as error:
        raise BackupError(str(error)) from None


def backup_sqlite(source: Path, target: Path) -> int:
    """Copy ``source`` to the new file ``target`` (mode 0600); the pages copied."""
    if not source.is_file():
        raise BackupError(f"{source}: no such database")
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise BackupError(f"{target} exists: name a new file") from None
    except OSError as error:
        raise BackupError(f"{target}: {error.strerror or error}") from None
    os.close(fd)
    try:
        with (
            closing(sqlite3.connect(source, timeout=BUSY_TIMEOUT_SECONDS)) as live,
            closing(sqlite3.connect(target)) as copy,
        ):
            live.backup(copy)
            pages = int(copy.execute("PRAGMA page_count").fetchone()[0])
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except sqlite3.Error as error:
        target.unlink(missing_ok=True)
        raise BackupError(f"the copy failed: {error}") from None
    return pages
