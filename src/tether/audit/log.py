"""The audit log writer: durable, hash-chained, group-committed appends.

:meth:`AuditLog.append` puts an event on a queue and waits. One writer task takes every
event waiting (up to ``max_batch``), and in one transaction reads the chain head, gives
each event the next ``seq`` and its hash (:mod:`tether.audit.canonical`), inserts them all,
adds a signed checkpoint when one is due, and commits; only then are the waiters released,
each with its event as stored. So an append returns only once its event is durable, and
many concurrent appends share one commit (group commit): the cost of a commit is paid per
batch, not per event.

Security decisions:

* **Chain order is commit order.** The head is read inside the transaction that extends
  it, under a lock: ``pg_advisory_xact_lock`` on PostgreSQL (held to commit, so any number
  of nodes take turns and none can fork the chain), ``BEGIN IMMEDIATE`` on SQLite (the
  database's write lock, for several processes on one file). ``seq`` being the primary
  key is the backstop: two writers that computed the same position conflict, and the
  loser retries on the new head; it never writes a second event at one position.
* **No gaps.** ``seq`` is computed (head + 1), not drawn from a sequence that a rolled-back
  transaction would skip, so a missing ``seq`` always means a deleted event.
* **Durability on SQLite**: the writer switches the database to WAL and sets its own
  connection's ``synchronous`` (``audit.sqlite_synchronous``): ``full`` (the default)
  fsyncs the WAL at every commit, surviving power loss; ``normal`` survives a killed
  process but not a power cut. Measured in ``bench/audit_append.py``; see docs/audit.md.
* **Failing closed.** If a batch cannot be committed, every append in it raises
  :class:`AuditUnavailable`, and the caller must refuse the action it was auditing. An
  append after :meth:`close` raises too.
* **Checkpoints**: every ``checkpoint_every`` events or ``checkpoint_interval`` seconds
  (whichever comes first, and at close), signed in the same transaction as the events
  they anchor, with the key the signer returns at that moment (:mod:`.checkpoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal, TypeVar

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.audit import store
from tether.audit.canonical import GENESIS, event_hash
from tether.audit.checkpoints import Signer, sign_checkpoint
from tether.audit.events import AuditEvent
from tether.audit.store import ChainHead, Checkpoint

log = logging.getLogger(__name__)

# pg_advisory_xact_lock key of the audit chain: "tetherau" as a big-endian int64.
CHAIN_LOCK_KEY: Final = int.from_bytes(b"tetherau", "big")
_CONFLICT_RETRIES: Final = 8
_QUEUE_LIMIT: Final = 100_000

Synchronous = Literal["full", "normal"]
T = TypeVar("T")


class AuditUnavailable(Exception):
    """The event could not be made durable: the action it audits must be refused."""


@dataclass(frozen=True, slots=True)
class _Pending:
    event: AuditEvent
    done: asyncio.Future[AuditEvent]


class AuditLog:
    """The single writer of one node's audit trail. ``await start()`` before appending,
    ``await close()`` at shutdown (it drains the queue and writes a last checkpoint)."""

    def __init__(
        self,
        engine: AsyncEngine,
        signer: Signer,
        *,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        max_batch: int = 1000,
        sqlite_synchronous: Synchronous = "full",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if checkpoint_every < 1 or checkpoint_interval <= 0 or max_batch < 1:
            raise ValueError("checkpoint_every, checkpoint_interval and max_batch must be > 0")
        self._engine = engine
        self._signer = signer
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        self._max_batch = max_batch
        self._synchronous = sqlite_synchronous
        self._clock = clock
        self._sqlite = engine.dialect.name == "sqlite"
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue(_QUEUE_LIMIT)
        self._conn: AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._unanchored = False  # events of ours after the last checkpoint
        self._anchor_time = clock()  # the last checkpoint's time, else when we started
        self.batches = 0  # committed batches, for the benchmark and tests

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the writer's connection and start the writer task."""
        if self._task is not None:
            raise RuntimeError("the audit log is already started")
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="tether-audit-writer")

    async def close(self) -> None:
        """Stop taking appends, commit those queued, checkpoint, and close the connection."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            await self._queue.put(None)  # wakes the writer up
            await self._task
        with contextlib.suppress(SQLAlchemyError):
            await self._checkpoint_now()
        await self._disconnect()

    # --- appending ------------------------------------------------------------------------

    async def append(self, event: AuditEvent) -> AuditEvent:
        """Append ``event`` and return it as stored (``seq`` and hashes set), once committed.

        Raises :class:`AuditUnavailable` when it could not be committed. Cancelling the
        caller does not withdraw the event: it is written all the same.
        """
        if self._closing or self._task is None:
            raise AuditUnavailable("the audit log is not running")
        done: asyncio.Future[AuditEvent] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(event, done))
        return await asyncio.shield(done)

    async def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint of the current head now (None when nothing is unanchored)."""
        return await self._checkpoint_now()

    # --- the writer task ------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), self._idle_timeout())
            except TimeoutError:
                await self._timed_checkpoint()
                continue
            batch = self._drain(first)
            if batch:
                await self._commit_batch(batch)
            if self._closing and self._queue.empty():
                return

    def _idle_timeout(self) -> float | None:
        """Seconds until a checkpoint is due by time; None while everything is anchored."""
        if not self._unanchored:
            return None
        elapsed = (self._clock() - self._anchor_time).total_seconds()
        return max(0.0, self._interval - elapsed)

    def _drain(self, first: _Pending | None) -> list[_Pending]:
        batch = [first]
        while len(batch) < self._max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return [pending for pending in batch if pending is not None]

    async def _commit_batch(self, batch: list[_Pending]) -> None:
        try:
            stored = await self._with_retries(lambda conn: self._write(conn, batch))
        except Exception as error:  # noqa: BLE001 - every failure refuses the batch
            log.error("audit batch of %d events not committed: %s", len(batch), error)
            failure = AuditUnavailable(f"audit trail unavailable: {type(error).__name__}")
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(failure)
            return
        self.batches += 1
        for pending, event in zip(batch, stored, strict=True):
            if not pending.done.done():
                pending.done.set_result(event)

    async def _write(self, conn: AsyncConnection, batch: list[_Pending]) -> list[AuditEvent]:
        head = await self._lock_and_read_head(conn)
        seq, prev = head.seq, head.hash or GENESIS
        chained: list[AuditEvent] = []
        for pending in batch:
            seq += 1
            digest = event_hash(pending.event, seq, prev)
            chained.append(pending.event.chained(seq, prev, digest))
            prev = digest
        await store.insert_rows(conn, [store.event_row(event) for event in chained])
        await self._checkpoint_if_due(conn, ChainHead(seq, prev))
        return chained

    async def _lock_and_read_head(self, conn: AsyncConnection) -> ChainHead:
        if self._sqlite:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
        return await store.chain_head(conn)

    async def _checkpoint_if_due(self, conn: AsyncConnection, head: ChainHead) -> None:
        """Checkpoint ``head`` in this transaction if ``checkpoint_every`` events or
        ``checkpoint_interval`` seconds have passed since the last checkpoint (any node's)."""
        last = await store.last_checkpoint(conn)
        now = self._clock()
        if last is not None:
            self._anchor_time = max(self._anchor_time, last.time)
        by_count = head.seq - (0 if last is None else last.seq) >= self._every
        by_time = (now - self._anchor_time).total_seconds() >= self._interval
        if head.hash is None or not (by_count or by_time):
            self._unanchored = True
            return
        await store.insert_checkpoint(conn, sign_checkpoint(self._signer(), head.seq, head.hash, now))
        self._anchor_time, self._unanchored = now, False

    async def _timed_checkpoint(self) -> None:
        try:
            await self._checkpoint_now()
        except (SQLAlchemyError, AuditUnavailable) as error:
            log.warning("audit checkpoint failed, retrying in a second: %s", error)
            retry_in = timedelta(seconds=max(0.0, self._interval - 1.0))
            self._anchor_time = self._clock() - retry_in

    async def _checkpoint_now(self) -> Checkpoint | None:
        async def write(conn: AsyncConnection) -> Checkpoint | None:
            head = await self._lock_and_read_head(conn)
            last = await store.last_checkpoint(conn)
            if head.hash is None or (last is not None and last.seq >= head.seq):
                self._unanchored = False
                return None
            now = self._clock()
            checkpoint = sign_checkpoint(self._signer(), head.seq, head.hash, now)
            await store.insert_checkpoint(conn, checkpoint)
            self._anchor_time, self._unanchored = now, False
            return checkpoint

        return await self._with_retries(write)

    # --- transactions ---------------------------------------------------------------------

    async def _with_retries(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction on the writer's connection, again after a conflict
        with another writer or a lost connection (once)."""
        for attempt in range(_CONFLICT_RETRIES):
            conn = await self._connection()
            try:
                async with conn.begin():
                    return await work(conn)
            except IntegrityError:
                # Another writer took the position we computed: retry on the new head.
                log.info("audit append conflicted with another writer (attempt %d)", attempt + 1)
            except (OperationalError, DBAPIError) as error:
                if error.connection_invalidated or not _transient(error):
                    await self._disconnect()
                    if attempt:
                        raise
            await asyncio.sleep(0.001 * 2**attempt)
        raise AuditUnavailable("audit append kept conflicting with another writer")

    async def _connection(self) -> AsyncConnection:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            await self._connect()
        assert self._conn is not None
        return self._conn

    async def _connect(self) -> None:
        conn = await self._engine.connect()
        if self._sqlite:
            mode = (await conn.exec_driver_sql("PRAGMA journal_mode=WAL")).scalar()
            if str(mode).lower() != "wal":
                log.warning("the SQLite database is in %s mode, not WAL", mode)
            await conn.exec_driver_sql(f"PRAGMA synchronous={self._synchronous.upper()}")
            await conn.commit()
        self._conn = conn

    async def _disconnect(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                await self._conn.close()
            self._conn = None


def _transient(error: DBAPIError) -> bool:
    """A lock or serialization conflict that a retry may clear."""
    message = str(error.orig).lower()
    return any(s in message for s in ("locked", "busy", "deadlock", "serializ", "could not obtain"))
