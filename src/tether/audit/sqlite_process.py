"""The SQLite audit writer's own process: the statements of a batch, run where the node's
event loop does not wait for them.

:class:`tether.audit.writers.SqliteWriter` starts this module as a script
(``python -I -S sqlite_process.py``: the standard library only, no site packages, no
``PYTHONPATH``) and talks to it over its standard input and output, one request and one
answer at a time. Binding an event's 24 values and running the ``INSERT`` cost about as
much CPU as building the event's canonical text; in the node's own process that work held
the interpreter lock the event loop needs, so the two could not run on two cores at once.
Here they can (docs/audit.md has the measurements).

Framing: each message is a 4-byte big-endian length, then that many bytes of
:mod:`marshal` data (a tuple). ``marshal`` is safe here: both ends are this Python, and
the child reads only what its parent wrote.

Requests, each answered ``("ok", value)`` or ``("error", kind, message)`` (``kind``:
``integrity``, ``busy`` or ``error``):

* ``("open", path, synchronous, busy_timeout_ms, head_sql)``: open the database (WAL,
  ``synchronous`` as given, no automatic WAL checkpoint: the parent runs those); the
  value is ``(journal_mode, synchronous_level, wal_autocheckpoint)`` as SQLite took them.
* ``("begin",)``: ``BEGIN IMMEDIATE`` (SQLite's write lock), then ``head_sql``; the value
  is its row (the head and the last checkpoint).
* ``("write", expect, insert_prefix, values_group, columns, rows_per_statement, params,
  checkpoint_sql, checkpoint_params)``: the batch's rows (``params`` is every row's values
  in one flat list), the checkpoint row when ``checkpoint_sql`` is not empty, then
  ``head_sql`` again and ``COMMIT``; the value is ``("done", that row)``. With ``expect``
  None it continues the transaction ``begin`` opened. Otherwise it opens one itself and
  first compares ``head_sql``'s row with ``expect``, the row the batch was planned on: if
  they differ (another writer appended in between) nothing is written, the transaction
  stays open, and the value is ``("stale", the actual row)``, for the parent to plan again
  and send a ``write`` with ``expect`` None.
* ``("rollback",)``: end the open transaction without writing.

Security decisions:

* **Nothing half-received is written.** A request is acted on only once every byte of it
  has arrived. At end of input (the parent closed the pipe, or died) the connection is
  closed, which rolls back an open transaction, and the process exits.
* **Any error inside a transaction rolls it back** before it is answered: the parent never
  inherits a transaction in an unknown state.
* ``SIGINT``, ``SIGTERM`` and ``SIGHUP`` are ignored: a Ctrl-C, a service stop or a closed
  terminal reaches the whole process group, and the node still has its last batch and its
  closing checkpoint to write through this process. It ends when the node closes its input.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import marshal
import signal
import sqlite3
import struct
import sys
from pathlib import Path
from typing import IO, Any

if __name__ == "__main__":  # run as a script (-I: no PYTHONPATH): find our package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tether.audit.chain_text import GENESIS, chain_hashes  # standard library only

HEADER = struct.Struct(">I")
# The largest message read: a batch of 1,000 events is about 1 MB.
MAX_MESSAGE = 256 * 1024 * 1024
PIPE_BYTES = 1024 * 1024


def sqlite_time(canonical: str) -> str:
    """An event's RFC 3339 UTC text as SQLAlchemy stores a DATETIME in SQLite:
    ``2026-11-29T10:00:00.000000Z`` -> ``2026-11-29 10:00:00.000000``."""
    return f"{canonical[:10]} {canonical[11:26]}"


def read_message(stream: IO[bytes]) -> Any:
    """The next message, or None at end of input. A partial message, a length over
    :data:`MAX_MESSAGE` or a body that is not marshal data count as the end: the framing
    can no longer be trusted, so nothing more is read."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    if size > MAX_MESSAGE:
        return None
    body = stream.read(size)
    if len(body) < size:
        return None
    try:
        return marshal.loads(body)  # noqa: S302 - written by our parent (module docstring)
    except (ValueError, EOFError, TypeError):
        return None


def write_message(stream: IO[bytes], message: Any) -> None:
    body = marshal.dumps(message)
    stream.write(HEADER.pack(len(body)) + body)
    stream.flush()


class Session:
    """One connection and the requests on it (module docstring)."""

    def __init__(self) -> None:
        self.db: sqlite3.Connection | None = None
        self.head_sql = ""
        self.statements: dict[tuple[str, int], str] = {}
        self.signing: list[str] | None = None  # a batch written, waiting for its checkpoint

    def handle(self, request: tuple[Any, ...]) -> tuple[Any, ...]:
        try:
            return ("ok", self._dispatch(request))
        except sqlite3.Error as error:
            self._roll_back()
            return ("error", _kind(error), f"{type(error).__name__}: {error}")
        except Exception as error:  # noqa: BLE001 - a malformed request, answered
            self._roll_back()
            return ("error", "error", f"{type(error).__name__}: {error}")

    def close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            db.close()  # rolls back an open transaction

    def _dispatch(self, request: tuple[Any, ...]) -> Any:
        op = request[0]
        if op == "open":
            return self._open(*request[1:])
        db = self.db
        if db is None:
            raise RuntimeError("the database is not open")
        if op == "begin":
            db.execute("BEGIN IMMEDIATE")
            return self._head(db)
        if op == "write":
            return self._write(db, *request[1:])
        if op == "checkpoint":
            return self._checkpoint(db, *request[1:])
        if op == "rollback":
            self._roll_back()
            return None
        raise ValueError(f"unknown request {op!r}")

    def _open(self, path: str, synchronous: str, busy_ms: int, head_sql: str) -> tuple[Any, ...]:
        self.close()
        db = sqlite3.connect(path, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        journal = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        if synchronous not in ("full", "normal"):
            raise ValueError(f"synchronous must be full or normal, not {synchronous!r}")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("PRAGMA wal_autocheckpoint=0")
        level = int(db.execute("PRAGMA synchronous").fetchone()[0])
        autocheckpoint = int(db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self.db, self.head_sql = db, head_sql
        return (journal, level, autocheckpoint)

    def _head(self, db: sqlite3.Connection) -> tuple[Any, ...]:
        return tuple(db.execute(self.head_sql).fetchone())

    def _write(
        self,
        db: sqlite3.Connection,
        expect: tuple[Any, ...],
        prefix: str,
        group: str,
        columns: int,
        per_statement: int,
        width: int,
        values: list[Any],
        sign: bool,
    ) -> tuple[Any, ...]:
        if not db.in_transaction:
            db.execute("BEGIN IMMEDIATE")
        actual = self._head(db)
        if actual != tuple(expect):
            return ("stale", actual)  # the transaction stays open, its lock held
        count = len(values) // width
        if count * width != len(values) or columns != width + 3:
            raise ValueError(f"{len(values)} values are not events of {width} columns")
        seq, prev = (actual[0] or 0), (actual[1] or GENESIS)
        events = [values[i : i + width] for i in range(0, len(values), width)]
        hashes = chain_hashes(events, seq, prev)
        params: list[Any] = []
        add, extend = params.append, params.extend
        for event, digest in zip(events, hashes, strict=True):
            seq += 1
            time = event[1]  # sqlite_time(), inlined: this loop runs once per event
            extend((seq, event[0], f"{time[:10]} {time[11:26]}"))
            extend(event[2:])
            add(prev)
            add(digest)
            prev = digest
        for start in range(0, count, per_statement):
            rows = min(per_statement, count - start)
            db.execute(
                self._statement(prefix, group, rows),
                params[start * columns : (start + rows) * columns],
            )
        if sign:
            if actual[1] is None and not hashes:
                raise ValueError("nothing to checkpoint: the trail is empty")
            self.signing = hashes
            return ("sign", seq, prev)  # the transaction stays open for the checkpoint
        return self._commit(db, hashes)

    def _checkpoint(self, db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> Any:
        hashes, self.signing = self.signing, None
        if hashes is None or not db.in_transaction:
            raise RuntimeError("checkpoint without a write waiting for it")
        db.execute(sql, params)
        return self._commit(db, hashes)

    def _commit(self, db: sqlite3.Connection, hashes: list[str]) -> tuple[Any, ...]:
        head = self._head(db)  # still under the lock: exactly what this transaction leaves
        db.execute("COMMIT")
        return ("done", head, hashes)

    def _statement(self, prefix: str, group: str, count: int) -> str:
        """``prefix`` followed by ``count`` ``group``s: one multi-row INSERT."""
        key = (prefix, count)
        statement = self.statements.get(key)
        if statement is None:
            statement = prefix + (", " + group) * (count - 1)
            if len(self.statements) < 64:
                self.statements[key] = statement
        return statement

    def _roll_back(self) -> None:
        self.signing = None
        if self.db is not None and self.db.in_transaction:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                self.close()  # a fresh connection for the next request


def _kind(error: sqlite3.Error) -> str:
    if isinstance(error, sqlite3.IntegrityError):
        return "integrity"
    text = str(error)
    if isinstance(error, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
        return "busy"
    return "error"


def serve(requests: IO[bytes], answers: IO[bytes]) -> None:
    """Answer requests until the end of input, then close the database."""
    session = Session()
    try:
        while (request := read_message(requests)) is not None:
            if not isinstance(request, tuple) or not request:
                write_message(answers, ("error", "error", "a request is a non-empty tuple"))
                continue
            write_message(answers, session.handle(request))
    finally:
        session.close()


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Nothing here makes reference cycles (messages are tuples, lists and strings; one
    # connection lives for the whole process), so the cycle collector only costs: each
    # batch allocates some 25,000 objects, and it would walk them again and again.
    gc.disable()
    # Pipes of 1 MiB (Linux; 64 KiB by default): a batch of 512 events, about 400 KB,
    # then crosses in one write instead of a hand-off every 64 KiB.
    for fd in (0, 1):
        with contextlib.suppress(OSError):  # not a pipe, or over the system's maximum
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    with contextlib.suppress(BrokenPipeError):  # the parent is gone: nothing to answer
        serve(sys.stdin.buffer, sys.stdout.buffer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
