"""How one batch reaches the database: a locked transaction per batch, one per backend.

The rest of Tether talks to the store through SQLAlchemy; the audit writer does not, on
its hot path. Through SQLAlchemy's aiosqlite adapter every statement costs several
hand-offs between the event loop and the driver's thread (cursor, execute, fetch, close),
and a batch is five statements: measured, that alone capped appends far below the goal.
So each backend runs the batch in the fewest round trips its driver allows:

* :class:`SqliteWriter` runs the batch in a process of its own
  (:mod:`tether.audit.sqlite_process`, started with the writer, reached through pipes on
  the event loop): the event loop sends each event's columns, the process chains them
  (:mod:`tether.audit.chain_text`), binds and inserts the rows and commits. That work cost
  more CPU than the event loop's own share of an append, and in the node's process it held
  the interpreter lock the loop needs, so the two took turns on one core; in its own
  process it runs on the other (docs/audit.md: interleaved pairs, 1,024 emitters, 16-18k ->
  21k appends/s). A batch is one round trip: it is sent with the head the previous batch
  left, and the process compares that with the head it reads under the lock before
  writing; when another writer got in between, it answers the actual head with the lock
  still held, and the batch is sent again on it. A batch with a checkpoint due takes one
  more round trip: the process answers the new head's hash, this process signs it (the key
  stays here). The transaction is ``BEGIN IMMEDIATE``, one multi-row ``INSERT`` per 1,000
  events, the checkpoint, the head read again, ``COMMIT``.
  The fsync (``synchronous=FULL``, WAL) happens once per batch, at ``COMMIT``. The WAL is
  copied back into the database file (a WAL checkpoint) by a connection of its own on a
  thread of its own, every :data:`SQLITE_WAL_CHECKPOINT_EVENTS` events, ``PASSIVE`` (it
  never waits for, nor holds up, the writer): left to SQLite, the commit that crosses 1,000
  WAL pages runs it, and that batch's waiters wait for the copy and two more flushes
  (measured: p99 of an append at 64 and 256 emitters 8 to 14 and 22 to 27 ms instead of 14.5
  and 30 to 32; at one emitter p50 is ~0.15 ms worse, docs/audit.md).
* :class:`PostgresWriter` uses the asyncpg connection under a pooled SQLAlchemy
  connection: ``pg_advisory_xact_lock``, the head, a pipelined ``executemany``, COMMIT.

Both chain with :func:`tether.audit.chain_text.chain_hashes` and ask the batch's ``due`` and
``sign`` (``tether.audit.log``'s checkpoint rule and key) under the lock, so chaining and
the checkpoint rule are written once. Reads (search, verify,
sinks) stay on SQLAlchemy: they are not on any action's path.

Security decisions:

* **The head is read under the lock that the insert holds until COMMIT**: SQLite's write
  lock taken by ``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped advisory lock. A
  second writer (another process, another node) waits, then reads the new head. A SQLite
  batch planned ahead on the expected head is written only if the head read under the lock
  is exactly that one (its ``seq`` and hash, and the last checkpoint's row).
* **A batch whose commit is unknown is not written again**: when the writer process dies
  after a batch's request left, the batch may or may not be in the trail. Its appends fail
  (:class:`WriterError` ``outcome_unknown``), so their actions are refused, rather than
  risk the same events twice. A batch that failed before its request left is retried once,
  through a new process.
* **The SQLite connection's durability is explicit**: WAL mode, ``synchronous`` as
  configured, ``busy_timeout`` so a writer waits for the lock instead of failing. A WAL
  checkpoint changes nothing that is durable (a committed event is in the WAL, flushed, before
  its waiter is released); one that fails is logged and tried again later, appends go on.
"""

from __future__ import annotations

import asyncio
import logging
import marshal
import sqlite3
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, Final, Literal, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.audit import sqlite_process
from tether.audit.chain_text import COLUMN_NAMES, GENESIS, chain_hashes
from tether.audit.store import ChainHead, Checkpoint

# pg_advisory_xact_lock key of the audit chain: "tetherau" as a big-endian int64.
CHAIN_LOCK_KEY: Final = int.from_bytes(b"tetherau", "big")
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Rows per INSERT statement: 24 columns x 1000 rows stays under SQLite's default limit of
# 32,766 bound variables.
SQLITE_ROWS_PER_STATEMENT: Final = 1000
# How long a writer process has to exit once its input is closed, before it is killed.
SQLITE_PROCESS_EXIT_SECONDS: Final = 10.0
# Events appended between two background WAL checkpoints (an event is a page or two of WAL).
SQLITE_WAL_CHECKPOINT_EVENTS: Final = 1000

log = logging.getLogger(__name__)

# The columns of audit_events in insert order (quoted: ``user`` is reserved in SQL).
COLUMNS: Final = (
    "seq", "id", "time", "kind", "agent", "runtime", "task", "user", "actor_chain", "target",
    "action", "decision", "rule", "reason", "policy_version", "session_id", "source_ip",
    "bytes_in", "bytes_out", "rows", "duration_ms", "detail", "prev_hash", "hash",
)  # fmt: skip
_CHECKPOINT_COLUMNS: Final = ("seq", "hash", "time", "kid", "signature")
# The chain head (seq, hash) and the last checkpoint's columns, NULLs when there is none.
_HEAD_AND_CHECKPOINT: Final = (
    "SELECT h.seq, h.hash, c.seq, c.hash, c.time, c.kid, c.signature FROM (SELECT 1) "
    "LEFT JOIN (SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1) AS h "
    "LEFT JOIN (SELECT seq, hash, time, kid, signature FROM audit_checkpoints "
    "ORDER BY seq DESC LIMIT 1) AS c"
)

Synchronous = Literal["full", "normal"]


class WriterError(Exception):
    """A batch could not be written; ``transient`` when another try may succeed;
    ``outcome_unknown`` when the batch may have been committed all the same (the writer
    process went away after its last request left): it must not be written again."""

    def __init__(self, message: str, *, transient: bool, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
        self.outcome_unknown = outcome_unknown


# Where an appended event landed: its ``seq``, ``prev_hash`` and ``hash``.
Position = tuple[int, str, str]


@dataclass(frozen=True, slots=True)
class Batch:
    """What one transaction appends: ``rows``, each event's columns (the order of
    :data:`tether.audit.chain_text.COLUMN_NAMES`), then a checkpoint if ``due(seq, last)``
    says one is due once the head is event ``seq`` and the last checkpoint (read under the
    lock) is ``last``; ``sign(seq, hash)`` makes it. Both are asked under the chain lock."""

    rows: Sequence[tuple[Any, ...]]
    due: Callable[[int, Checkpoint | None], bool]
    sign: Callable[[int, str], Checkpoint]


@dataclass(frozen=True, slots=True)
class Written:
    """Where each event of a batch landed, in order, and the checkpoint written with it."""

    positions: Sequence[Position]
    checkpoint: Checkpoint | None


class BatchWriter(Protocol):
    async def open(self) -> None: ...

    async def write(self, batch: Batch) -> Written: ...

    async def close(self) -> None: ...


def positions(seq: int, prev_hash: str, hashes: Sequence[str]) -> list[Position]:
    """The positions of events with ``hashes`` appended after event ``seq`` (``prev_hash``)."""
    found: list[Position] = []
    for digest in hashes:
        seq += 1
        found.append((seq, prev_hash, digest))
        prev_hash = digest
    return found


def insert_sql(table: str, columns: Sequence[str], placeholder: Callable[[int], str]) -> str:
    """``INSERT INTO table (columns) VALUES (placeholders)``; ``placeholder(n)`` for the
    n-th value (``?`` for sqlite3, ``$n`` for asyncpg)."""
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(placeholder(i + 1) for i in range(len(columns)))
    return f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608 - constant names


def _sqlite_time(moment: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format, which the readers parse (UTC).
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


class SqliteWriter:
    """The batch's statements run in a process of their own (:mod:`tether.audit.sqlite_process`),
    reached through pipes on the event loop: two round trips a batch (``begin``, which
    answers the head, then ``write``), the plan made on the loop in between."""

    def __init__(self, path: str, synchronous: Synchronous) -> None:
        self._path = path
        self._synchronous = synchronous
        self._child: _Child | None = None
        # The head row (head and last checkpoint) this writer's last batch left, to plan
        # the next one on before reading it; None when unknown (start, any failure).
        self._expected: tuple[Any, ...] | None = None
        # What the process needs to build the INSERT statements: prefix, one more row,
        # columns a row, rows a statement, columns an event (tether.audit.sqlite_process).
        self._shape = (
            insert_sql("audit_events", COLUMNS, lambda _: "?"),
            "(" + ", ".join("?" * len(COLUMNS)) + ")",
            len(COLUMNS), SQLITE_ROWS_PER_STATEMENT, len(COLUMN_NAMES),
        )  # fmt: skip
        self._insert_checkpoint = insert_sql(
            "audit_checkpoints", _CHECKPOINT_COLUMNS, lambda _: "?"
        )
        self.journal_mode = ""
        self.synchronous_level = -1
        self.wal_autocheckpoint = -1
        # The WAL checkpointer: its own thread and connection (module docstring).
        self._wal_executor = ThreadPoolExecutor(1, thread_name_prefix="tether-audit-wal")
        self._wal_db: sqlite3.Connection | None = None
        self._wal_pending: asyncio.Future[None] | None = None
        self._since_wal_checkpoint = 0
        self.wal_checkpoints = 0  # completed, for the tests

    @property
    def pid(self) -> int | None:
        """The writer process's id while it runs (for the tests)."""
        return None if self._child is None else self._child.process.pid

    async def open(self) -> None:
        """Start the writer process and open the database in it."""
        await self._close()
        self._expected = None
        child = await _Child.start()
        try:
            request = ("open", self._path, self._synchronous, SQLITE_BUSY_TIMEOUT_MS)
            answer = await child.call((*request, _HEAD_AND_CHECKPOINT))
        except BaseException:
            await child.stop()
            raise
        self.journal_mode, self.synchronous_level, self.wal_autocheckpoint = answer
        self._child = child

    async def write(self, batch: Batch) -> Written:
        """Write one batch: in one round trip when the head is the one this writer's last
        batch left (the process checks it under the lock), and the event loop only sends
        the columns: the process chains them (:mod:`tether.audit.chain_text`). A due
        checkpoint costs a second round trip, to sign the new head here (the key never
        leaves this process)."""
        if self._child is None or self._child.gone:
            await self.open()
        child = self._child
        assert child is not None
        expected, self._expected = self._expected, None  # unknown until this one succeeds
        count = len(batch.rows)
        values = list(chain.from_iterable(batch.rows))
        checkpoint: Checkpoint | None = None
        try:
            row = expected if expected is not None else await child.call(("begin",))
            while True:
                head, last = _head_and_checkpoint(row)
                sign = (count > 0 or head.hash is not None) and batch.due(head.seq + count, last)
                request: tuple[Any, ...] = ("write", row, *self._shape, values, sign)
                answer = await child.call(request, commits=not sign)
                if answer[0] != "stale":
                    break
                row = answer[1]  # planned again on the actual head, the lock still held
            if answer[0] == "sign":
                checkpoint = batch.sign(answer[1], answer[2])
                request = ("checkpoint", self._insert_checkpoint, _sqlite_checkpoint(checkpoint))
                answer = await child.call(request, commits=True)
        except BaseException:
            # A failed round trip, the checkpoint rule or the signer: whatever the process
            # holds open ends here (a no-op when nothing is; a retired process holds none).
            if not child.gone:
                await self._roll_back(child)
            raise
        _, self._expected, hashes = answer
        self._wal_checkpoint_due(count)
        return Written(positions(head.seq, head.hash or GENESIS, hashes), checkpoint)

    def _wal_checkpoint_due(self, rows: int) -> None:
        self._since_wal_checkpoint += rows
        if self._since_wal_checkpoint >= SQLITE_WAL_CHECKPOINT_EVENTS and (
            self._wal_pending is None or self._wal_pending.done()
        ):
            self._since_wal_checkpoint = 0
            loop = asyncio.get_running_loop()
            self._wal_pending = loop.run_in_executor(self._wal_executor, self._wal_checkpoint)
            self._wal_pending.add_done_callback(_wal_checkpointed)

    async def close(self) -> None:
        try:
            if self._wal_pending is not None:
                await asyncio.wait([self._wal_pending])
            await asyncio.get_running_loop().run_in_executor(self._wal_executor, self._wal_close)
            await self._close()
        finally:
            self._wal_executor.shutdown(wait=True)

    def _wal_checkpoint(self) -> None:
        """Copy what the WAL holds into the database file, without waiting for anyone."""
        try:
            if self._wal_db is None:
                self._wal_db = sqlite3.connect(
                    self._path, isolation_level=None, check_same_thread=False
                )
                self._wal_db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            self._wal_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            self._wal_close()  # a fresh connection next time
            raise
        self.wal_checkpoints += 1

    def _wal_close(self) -> None:
        if self._wal_db is not None:
            db, self._wal_db = self._wal_db, None
            db.close()

    async def _close(self) -> None:
        if self._child is not None:
            child, self._child = self._child, None
            await child.stop()

    async def _roll_back(self, child: _Child) -> None:
        try:
            await child.call(("rollback",))
        except WriterError:
            await self._close()  # the process is gone or broken: the transaction ended with it
        except BaseException:  # cancelled: the process is in an unknown state, end it
            await asyncio.shield(self._close())
            raise


class _Child:
    """The writer process and its two pipes; one request at a time (the writer task's)."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.gone = False  # it failed or was stopped: start another

    @classmethod
    async def start(cls) -> _Child:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-S", sqlite_process.__file__,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
        except OSError as error:
            message = f"cannot start the audit writer process: {error}"
            raise WriterError(message, transient=False) from error
        return cls(process)

    async def call(self, request: tuple[Any, ...], *, commits: bool = False) -> Any:
        """Send ``request``, return the answer's value; :class:`WriterError` for an error
        answer or a process that is gone. When ``commits`` and the process went away after
        the request left, whether it committed is unknown: ``outcome_unknown`` is set."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        if self.gone:
            raise WriterError("the audit writer process was stopped", transient=False)
        body = _marshalled(request)
        sent = False
        try:
            stdin.write(sqlite_process.HEADER.pack(len(body)) + body)
            await stdin.drain()
            if stdin.is_closing():
                # The write failed (the process is gone) or the pipe was already lost: asyncio
                # reports that to drain() only two callbacks later. Nothing of this request
                # arrived whole, so it was not committed and may be written again.
                raise BrokenPipeError("the writer process's input is closed")
            sent = True
            (size,) = sqlite_process.HEADER.unpack(await stdout.readexactly(4))
            answer = marshal.loads(await stdout.readexactly(size))  # noqa: S302 - our child
        except (OSError, asyncio.IncompleteReadError, ValueError, EOFError) as error:
            await self.stop()
            raise WriterError(
                f"the audit writer process failed ({type(error).__name__}: {error})",
                transient=False, outcome_unknown=commits and sent,
            ) from error  # fmt: skip
        except BaseException:
            # Cancelled halfway: the pipes are out of step. Closing its input lets the
            # process finish what it fully received (a partial request counts as the end
            # of input) and exit; the next write starts another.
            self.gone = True
            if not stdin.is_closing():
                stdin.close()
            raise
        if answer[0] == "ok":
            return answer[1]
        kind, message = answer[1], answer[2]
        raise WriterError(
            f"conflict: {message}" if kind == "integrity" else message,
            transient=kind in ("integrity", "busy"),
        )

    async def stop(self) -> None:
        """Close its input (it rolls back what is open and exits); kill it if it lingers."""
        self.gone = True
        process = self.process
        if process.stdin is not None and not process.stdin.is_closing():
            process.stdin.close()
        try:
            async with asyncio.timeout(SQLITE_PROCESS_EXIT_SECONDS):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def _head_and_checkpoint(row: Sequence[Any]) -> tuple[ChainHead, Checkpoint | None]:
    """The head and the last checkpoint from the one row of :data:`_HEAD_AND_CHECKPOINT`
    (one statement: each round trip to the writer process counts, on every batch)."""
    head = ChainHead(0, None) if row[0] is None else ChainHead(int(row[0]), str(row[1]))
    if row[2] is None:
        return head, None
    moment = datetime.fromisoformat(row[4] + "+00:00")
    return head, Checkpoint(int(row[2]), str(row[3]), moment, str(row[5]), str(row[6]))


def _wal_checkpointed(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        log.warning("audit: WAL checkpoint failed, tried again later: %s", error)


def _pg_time(canonical: str) -> datetime:
    """The datetime of an event's RFC 3339 UTC text (``...T10:00:00.000000Z``)."""
    return datetime.fromisoformat(canonical)


def _marshalled(request: tuple[Any, ...]) -> bytes:
    """``request`` as marshal data. Values of a subclass of str, int or float (marshal
    takes exact types only) are sent as their base type: the same text, the same hash."""
    try:
        return marshal.dumps(request)
    except ValueError:
        return marshal.dumps(_exact(request))


def _exact(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return type(value)(_exact(v) for v in value) if type(value) in (tuple, list) else value
    for base in (str, float):
        if isinstance(value, base) and type(value) is not base:
            return base(value)
    if isinstance(value, int) and type(value) not in (int, bool):
        return int(value)
    return value


def _sqlite_checkpoint(checkpoint: Checkpoint) -> tuple[Any, ...]:
    c = checkpoint
    return (c.seq, c.hash, _sqlite_time(c.time), c.kid, c.signature)


class PostgresWriter:
    """The asyncpg connection under one pooled SQLAlchemy connection, held while open."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None
        self._driver: Any = None
        self._insert = insert_sql("audit_events", COLUMNS, lambda i: f"${i}")
        self._insert_checkpoint = insert_sql(
            "audit_checkpoints", _CHECKPOINT_COLUMNS, lambda i: f"${i}"
        )

    async def open(self) -> None:
        self._conn = await self._engine.connect()
        raw = await self._conn.get_raw_connection()
        self._driver = raw.driver_connection

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn, self._driver = self._conn, None, None
            await conn.close()

    async def write(self, batch: Batch) -> Written:
        import asyncpg  # type: ignore[import-untyped]  # the driver of this backend

        if self._driver is None or self._driver.is_closed():
            await self.close()
            await self.open()
        driver = self._driver
        try:
            async with driver.transaction():
                await driver.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK_KEY)
                head, last = await self._head(driver), await self._last_checkpoint(driver)
                prev = head.hash or GENESIS
                hashes = chain_hashes(batch.rows, head.seq, prev)
                landed = positions(head.seq, prev, hashes)
                rows = [
                    (seq, columns[0], _pg_time(columns[1]), *columns[2:], prev_hash, digest)
                    for (seq, prev_hash, digest), columns in zip(landed, batch.rows, strict=True)
                ]
                if rows:
                    await driver.executemany(self._insert, rows)
                seq, end_hash = head.seq + len(rows), hashes[-1] if hashes else head.hash
                checkpoint = None
                if end_hash is not None and batch.due(seq, last):
                    checkpoint = c = batch.sign(seq, end_hash)
                    await driver.execute(
                        self._insert_checkpoint, c.seq, c.hash, c.time, c.kid, c.signature
                    )
        except asyncpg.UniqueViolationError as error:
            raise WriterError(f"conflict: {error}", transient=True) from error
        except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError) as error:
            raise WriterError(str(error), transient=True) from error
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as error:
            await self.close()
            raise WriterError(f"{type(error).__name__}: {error}", transient=False) from error
        return Written(landed, checkpoint)

    @staticmethod
    async def _head(driver: Any) -> ChainHead:
        row = await driver.fetchrow("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1")
        return ChainHead(0, None) if row is None else ChainHead(int(row[0]), str(row[1]))

    @staticmethod
    async def _last_checkpoint(driver: Any) -> Checkpoint | None:
        row = await driver.fetchrow(
            "SELECT seq, hash, time, kid, signature FROM audit_checkpoints "
            "ORDER BY seq DESC LIMIT 1"
        )
        if row is None:
            return None
        return Checkpoint(int(row[0]), str(row[1]), row[2], str(row[3]), str(row[4]))


def writer_for(engine: AsyncEngine, synchronous: Synchronous) -> BatchWriter:
    """The batch writer for ``engine``'s database; ``ValueError`` for an in-memory SQLite."""
    if engine.dialect.name == "postgresql":
        return PostgresWriter(engine)
    database = make_url(str(engine.url.render_as_string(hide_password=False))).database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise ValueError("the audit trail needs a SQLite database file, not an in-memory one")
    return SqliteWriter(database, synchronous)
