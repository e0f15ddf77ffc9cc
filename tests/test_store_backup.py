"""``tether store backup`` (tether.store.backup): a SQLite database copied while another
connection writes to it is one consistent snapshot, in a new private file; anything else
(an existing file, a PostgreSQL URL, a missing database) is refused with a reason."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from tether.store.backup import BackupError, backup_sqlite, sqlite_path


def _database(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE pairs (a INTEGER, b INTEGER)")
        db.executemany("INSERT INTO pairs VALUES (?, ?)", [(i, -i) for i in range(5000)])
    db.close()


def test_a_copy_under_writes_is_one_consistent_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "tether.db"
    _database(source)
    stop = threading.Event()

    def write() -> None:  # two rows a transaction, keeping sum(a + b) == 0 only together
        with sqlite3.connect(source, timeout=30) as db:
            n = 5000
            while not stop.is_set():
                db.execute("INSERT INTO pairs VALUES (?, 0)", (n,))
                db.execute("INSERT INTO pairs VALUES (0, ?)", (-n,))
                db.commit()
                n += 1
        db.close()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        pages = backup_sqlite(source, tmp_path / "copy.db")
    finally:
        stop.set()
        writer.join()
    assert pages > 0
    assert stat.S_IMODE((tmp_path / "copy.db").stat().st_mode) == 0o600
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        count, total = copy.execute("SELECT count(*), sum(a + b) FROM pairs").fetchone()
        mode = copy.execute("PRAGMA journal_mode").fetchone()[0]
    copy.close()
    assert count >= 5000 and total == 0
    assert mode == "delete"  # one self-contained file
    assert not (tmp_path / "copy.db-wal").exists()


def test_what_cannot_be_copied_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "tether.db"
    _database(source)
    (tmp_path / "taken.db").write_text("mine")
    with pytest.raises(BackupError, match="exists: name a new file"):
        backup_sqlite(source, tmp_path / "taken.db")
    assert (tmp_path / "taken.db").read_text() == "mine"  # never clobbered
    with pytest.raises(BackupError, match="no such database"):
        backup_sqlite(tmp_path / "absent.db", tmp_path / "new.db")
    with pytest.raises(BackupError, match="No such file or directory"):
        backup_sqlite(source, tmp_path / "no" / "dir" / "new.db")
    (tmp_path / "garbage.db").write_bytes(b"not a database" * 100)
    with pytest.raises(BackupError, match="the copy failed"):
        backup_sqlite(tmp_path / "garbage.db", tmp_path / "new.db")
    assert not (tmp_path / "new.db").exists()  # a failed copy is removed


def test_only_sqlite_files_are_copied_here() -> None:
    assert sqlite_path("sqlite+aiosqlite:////var/lib/tether/tether.db") == Path(
        "/var/lib/tether/tether.db"
    )
    with pytest.raises(BackupError, match="the database is postgresql: back it up with"):
        sqlite_path("postgresql+asyncpg://tether@db/tether")
    with pytest.raises(BackupError, match="not a SQLite database file"):
        sqlite_path("sqlite+aiosqlite:///:memory:")
