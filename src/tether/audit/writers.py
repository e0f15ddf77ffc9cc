"""How one batch reaches the database: a locked transaction per batch, one per backend.

The rest of Tether talks to the store through SQLAlchemy; the audit writer does not, on
its hot path. Through SQLAlchemy's aiosqlite adapter every statement costs several
hand-offs between the event loop and the driver's thread (cursor, execute, fetch, close),
and a batch is five statements: measured, that alone capped appends far below the goal.
So each backend runs the batch in the fewest round trips its driver allows:

* :class:`SqliteWriter` keeps its own ``sqlite3`` connection in its own thread and runs the
  whole transaction (``BEGIN IMMEDIATE``, read the head and the last checkpoint in one
  statement, one multi-row ``INSERT`` per 1,000 events, checkpoint, ``COMMIT``) as one call
  there: one hand-off per batch, and the event loop keeps serving while SQLite waits for the
  disk. Few statements matter: after each one the thread must take the GIL back from the
  busy event loop. The fsync (``synchronous=FULL``, WAL) happens once per batch, at
  ``COMMIT``. The WAL is copied back into the database file (a WAL checkpoint) by a
  connection of its own on a thread of its own, every :data:`SQLITE_WAL_CHECKPOINT_EVENTS`
  events, ``PASSIVE`` (it never waits for, nor holds up, the writer): left to SQLite, the
  commit that crosses 1,000 WAL pages runs it, and that batch's waiters wait for the copy
  and two more flushes (measured: p99 of an append at 64 and 256 emitters 8 to 14 and 22 to
  27 ms instead of 14.5 and 30 to 32; at one emitter p50 is ~0.15 ms worse, docs/audit.md).
* :class:`PostgresWriter` uses the asyncpg connection under a pooled SQLAlchemy
  connection: ``pg_advisory_xact_lock``, the head, a pipelined ``executemany``, COMMIT.

Both call the same pure ``plan`` (``tether.audit.log``) between reading the head and
inserting, so chaining and the checkpoint rule are written once. Reads (search, verify,
sinks) stay on SQLAlchemy: they are not on any action's path.

Security decisions:

* **The head is read under the lock that the insert holds until COMMIT**: SQLite's write
  lock taken by ``BEGIN IMMEDIATE``, PostgreSQL's transaction-scoped advisory lock. A
  second writer (another process, another node) waits, then reads the new head.
* **The SQLite connection's durability is explicit**: WAL mode, ``synchronous`` as
  configured, ``busy_timeout`` so a writer waits for the lock instead of failing. A WAL
  checkpoint changes nothing that is durable (a committed event is in the WAL, flushed, before
  its waiter is released); one that fails is logged and tried again later, appends go on.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any, Final, Literal, Protocol

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.audit.store import ChainHead, Checkpoint

# pg_advisory_xact_lock key of the audit chain: "tetherau" as a big-endian int64.
CHAIN_LOCK_KEY: Final = int.from_bytes(b"tetherau", "big")
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000
# Rows per INSERT statement: 24 columns x 1000 rows stays under SQLite's default limit of
# 32,766 bound variables.
SQLITE_ROWS_PER_STATEMENT: Final = 1000
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
    """A batch could not be written; ``transient`` when another try may succeed."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True, slots=True)
class Plan:
    """What one transaction writes: where each event lands (``seq``, ``prev_hash``,
    ``hash``), their rows, maybe a checkpoint."""

    positions: Sequence[tuple[int, str, str]]
    rows: Sequence[tuple[Any, ...]]
    checkpoint: Checkpoint | None


# The value bound for an event's time, from the datetime and its canonical RFC 3339 text.
TimeValue = Callable[[datetime, str], Any]

# Given the head and the last checkpoint read under the lock, what to write.
Planner = Callable[[ChainHead, Checkpoint | None], Plan]


class BatchWriter(Protocol):
    def time_value(self, moment: datetime, canonical: str) -> Any:
        """The parameter to bind for an event's time (its datetime, its RFC 3339 text)."""
        ...

    async def open(self) -> None: ...

    async def write(self, planner: Planner) -> Plan: ...

    async def close(self) -> None: ...


def insert_sql(table: str, columns: Sequence[str], placeholder: Callable[[int], str]) -> str:
    """``INSERT INTO table (columns) VALUES (placeholders)``; ``placeholder(n)`` for the
    n-th value (``?`` for sqlite3, ``$n`` for asyncpg)."""
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(placeholder(i + 1) for i in range(len(columns)))
    return f"INSERT INTO {table} ({names}) VALUES ({values})"  # noqa: S608 - constant names


def _sqlite_time(moment: datetime) -> str:
    # SQLAlchemy's SQLite DATETIME storage format, which the readers parse (UTC).
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def sqlite_time_value(_moment: datetime, canonical: str) -> str:
    # "2026-11-29T10:00:00.000000Z" -> "2026-11-29 10:00:00.000000", as _sqlite_time does.
    return f"{canonical[:10]} {canonical[11:26]}"


class SqliteWriter:
    """One ``sqlite3`` connection in one thread; a batch is one call into that thread."""

    def __init__(self, path: str, synchronous: Synchronous) -> None:
        self._path = path
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="tether-audit-sqlite")
        self._db: sqlite3.Connection | None = None
        self._insert = insert_sql("audit_events", COLUMNS, lambda _: "?")
        self._values = "(" + ", ".join("?" * len(COLUMNS)) + ")"
        self._statements: dict[int, str] = {}
        self._insert_checkpoint = insert_sql(
            "audit_checkpoints", _CHECKPOINT_COLUMNS, lambda _: "?"
        )
        self.journal_mode = ""
        self.synchronous_level = -1
        # The WAL checkpointer: its own thread and connection (module docstring).
        self._wal_executor = ThreadPoolExecutor(1, thread_name_prefix="tether-audit-wal")
        self._wal_db: sqlite3.Connection | None = None
        self._wal_pending: asyncio.Future[None] | None = None
        self._since_wal_checkpoint = 0
        self.wal_checkpoints = 0  # completed, for the tests

    # The function itself, not a method calling it: called once per event, on the loop.
    time_value = staticmethod(sqlite_time_value)

    async def open(self) -> None:
        await self._call(self._open)

    async def write(self, planner: Planner) -> Plan:
        plan: Plan = await self._call(self._write, planner)
        self._since_wal_checkpoint += len(plan.rows)
        if self._since_wal_checkpoint >= SQLITE_WAL_CHECKPOINT_EVENTS and (
            self._wal_pending is None or self._wal_pending.done()
        ):
            self._since_wal_checkpoint = 0
            loop = asyncio.get_running_loop()
            self._wal_pending = loop.run_in_executor(self._wal_executor, self._wal_checkpoint)
            self._wal_pending.add_done_callback(_wal_checkpointed)
        return plan

    async def close(self) -> None:
        try:
            if self._wal_pending is not None:
                await asyncio.wait([self._wal_pending])
            await asyncio.get_running_loop().run_in_executor(self._wal_executor, self._wal_close)
            await self._call(self._close)
        finally:
            self._wal_executor.shutdown(wait=True)
            self._executor.shutdown(wait=True)

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

    async def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    def _open(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        self.journal_mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
        db.execute(f"PRAGMA synchronous={self._synchronous.upper()}")
        db.execute("PRAGMA wal_autocheckpoint=0")  # done in the background (module docstring)
        # What SQLite took (0 off, 1 normal, 2 full), for the tests and the benchmark.
        self.synchronous_level = int(db.execute("PRAGMA synchronous").fetchone()[0])
        self._db = db

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write(self, planner: Planner) -> Plan:
        if self._db is None:
            self._open()
        db = self._db
        assert db is not None
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                plan = planner(*self._head_and_checkpoint(db))
                self._insert_rows(db, plan.rows)
                if plan.checkpoint is not None:
                    db.execute(self._insert_checkpoint, _sqlite_checkpoint(plan.checkpoint))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.IntegrityError as error:
            raise WriterError(f"conflict: {error}", transient=True) from error
        except sqlite3.OperationalError as error:
            transient = "locked" in str(error) or "busy" in str(error)
            if not transient:
                self._close()
            raise WriterError(str(error), transient=transient) from error
        except sqlite3.Error as error:
            self._close()
            raise WriterError(str(error), transient=False) from error
        return plan

    def _insert_rows(self, db: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Multi-row ``INSERT`` statements rather than ``executemany``: one statement step
        per chunk instead of one per row, and so one hand-back of the GIL, which the event
        loop thread holds most of the time (each re-acquisition can wait for it)."""
        for start in range(0, len(rows), SQLITE_ROWS_PER_STATEMENT):
            chunk = rows[start : start + SQLITE_ROWS_PER_STATEMENT]
            statement = self._statements.get(len(chunk))
            if statement is None:
                statement = self._insert + (", " + self._values) * (len(chunk) - 1)
                if len(self._statements) < 64:
                    self._statements[len(chunk)] = statement
            db.execute(statement, list(chain.from_iterable(chunk)))

    @staticmethod
    def _head_and_checkpoint(db: sqlite3.Connection) -> tuple[ChainHead, Checkpoint | None]:
        """The head and the last checkpoint in one statement: each statement the writer
        thread runs hands the GIL back and must take it again from the busy event loop, so
        the batch transaction is kept to four (BEGIN, this, INSERT, COMMIT)."""
        row = db.execute(_HEAD_AND_CHECKPOINT).fetchone()
        head = ChainHead(0, None) if row[0] is None else ChainHead(int(row[0]), str(row[1]))
        if row[2] is None:
            return head, None
        moment = datetime.fromisoformat(row[4] + "+00:00")
        return head, Checkpoint(int(row[2]), str(row[3]), moment, str(row[5]), str(row[6]))


def _wal_checkpointed(done: asyncio.Future[None]) -> None:
    if not done.cancelled() and (error := done.exception()) is not None:
        log.warning("audit: WAL checkpoint failed, tried again later: %s", error)


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

    def time_value(self, moment: datetime, canonical: str) -> datetime:
        return moment

    async def open(self) -> None:
        self._conn = await self._engine.connect()
        raw = await self._conn.get_raw_connection()
        self._driver = raw.driver_connection

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn, self._driver = self._conn, None, None
            await conn.close()

    async def write(self, planner: Planner) -> Plan:
        import asyncpg  # type: ignore[import-untyped]  # the driver of this backend

        if self._driver is None or self._driver.is_closed():
            await self.close()
            await self.open()
        driver = self._driver
        try:
            async with driver.transaction():
                await driver.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK_KEY)
                plan = planner(await self._head(driver), await self._last_checkpoint(driver))
                await driver.executemany(self._insert, plan.rows)
                if plan.checkpoint is not None:
                    c = plan.checkpoint
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
        return plan

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
