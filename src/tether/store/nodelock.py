"""One process serves a SQLite database: ``tether serve`` holds an exclusive lock on
``<database>.node-lock`` while it runs (:func:`lock_database`).

Why: a node on SQLite keeps its DPoP replay cache in its own memory (one process is the
whole deployment), so a second process serving the same file would accept, once more, every
proof the first one accepted: a replayed request. Several nodes share a PostgreSQL
database instead, whose replay table they all check; no lock is taken there.
``tether store rekey`` takes the same lock, so that it never runs under a serving node
(which holds the old master key in memory).

The lock is ``flock`` on a file of its own (SQLite's locks on the database file are
``fcntl`` locks, which ``flock`` does not touch): the kernel drops it when the process ends,
however it ends, so a crash leaves no stale lock behind. The file holds the holder's pid
and what it does, for the refusal's message only.
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tether.store.database import sqlite_file

LOCK_SUFFIX: Final = ".node-lock"


class NodeLocked(Exception):
    """Another process holds the database's lock; the message names it."""


@dataclass
class NodeLock:
    """A held lock: released by :meth:`release` or when the process ends."""

    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def lock_database(database_url: str, doing: str) -> NodeLock | None:
    """Hold the lock of the SQLite database at ``database_url`` (``doing``: what for, shown
    to whoever finds it held); None for other databases. :class:`NodeLocked` when held."""
    database = sqlite_file(database_url)
    if database is None:
        return None
    path = database.with_name(database.name + LOCK_SUFFIX)
    if path.parent.exists() and not path.parent.is_dir():  # mkdir said only "File exists"
        raise NodeLocked(f"{path.parent}: not a directory (it holds the database)")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as error:
        # mkdir names the directory it could not make, which read as a problem of the lock.
        where = error.filename if isinstance(error.filename, str) else path
        raise NodeLocked(
            f"cannot open the lock {path}: {where}: {error.strerror or error}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 256).decode("utf-8", "replace").strip() or "another process"
        os.close(fd)
        raise NodeLocked(
            f"the database {database} is in use ({holder}); a SQLite database is served by "
            "one process only"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()}: {doing}\n".encode())
    return NodeLock(path, fd)
