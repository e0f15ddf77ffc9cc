"""The async engine for a database URL, with SQLite made ready to use."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


class StoreError(Exception):
    """The database cannot be opened or used; the message says which and why."""


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; a SQLite file's directory is created when missing."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StoreError("malformed database URL") from None
    if parsed.get_backend_name() == "sqlite":
        _prepare_sqlite_dir(parsed.database)
        engine = create_async_engine(parsed)
        event.listen(engine.sync_engine, "connect", _sqlite_on_connect)
        return engine
    return create_async_engine(parsed, pool_pre_ping=True)


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL; None for another database, an in-memory one or a
    ``file:`` URI (and for a malformed URL: opening it says why)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return None if database.startswith("file:") else Path(database)


class NotSqliteFile(Exception):
    """A command that works on a SQLite file was given another database."""


def sqlite_file_of(database_url: str, elsewhere: str) -> Path:
    """The file of a SQLite database URL; :class:`NotSqliteFile` otherwise, its message
    naming the other backend followed by ``elsewhere`` (what to use for it)."""
    path = sqlite_file(database_url)
    if path is not None:
        return path
    try:
        parsed = make_url(database_url)
    except ArgumentError:
        raise NotSqliteFile(f"not a database URL: {database_url!r}") from None
    backend = parsed.get_backend_name()
    if backend != "sqlite":
        raise NotSqliteFile(f"the database is {backend}: {elsewhere}")
    raise NotSqliteFile(f"not a SQLite database file: {parsed.database!r}")


def _prepare_sqlite_dir(database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database)
    if path.is_dir():
        raise StoreError(f"the SQLite database {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StoreError(f"cannot create {path.parent}: {error.strerror}") from None
    # A new database is the owner's alone (password and token hashes, the audit trail):
    # made here 0600 whatever the umask, and SQLite gives its -wal and -shm files its mode.
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as error:
        raise StoreError(f"cannot create {path}: {error.strerror}") from None


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # SQLite leaves foreign keys off unless asked, per connection.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
