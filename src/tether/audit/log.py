"""The audit log writer: durable, hash-chained, group-committed appends.

:meth:`AuditLog.append` puts an event on a queue and waits. One writer task takes every
event waiting (up to ``max_batch``) and writes them in one transaction
(:mod:`tether.audit.writers`): under the chain lock it reads the head, gives each event
the next ``seq`` and its hash (:mod:`tether.audit.chain_text`), inserts them all, adds a
signed checkpoint when one is due, and commits; only then are the waiters released, each
with its event as stored. So an append returns only once its event is durable, and many
concurrent appends share one commit (group commit): the price of a commit, a disk flush,
is paid per batch, not per event.

Security decisions:

* **Chain order is commit order.** The head is read inside the transaction that extends
  it, under a lock held to COMMIT (``pg_advisory_xact_lock`` on PostgreSQL, so any number
  of nodes take turns and none can fork the chain; SQLite's write lock through ``BEGIN
  IMMEDIATE``, for several processes on one file). ``seq`` being the primary key is the
  backstop: two writers that computed the same position conflict, and the loser retries
  on the new head; it never writes a second event at one position.
* **No gaps.** ``seq`` is computed (head + 1), not drawn from a sequence that a rolled-back
  transaction would skip, so a missing ``seq`` always means a deleted event.
* **Failing closed.** If a batch cannot be committed, every append in it raises
  :class:`AuditUnavailable`, and the caller must refuse the action it was auditing. An
  append after :meth:`AuditLog.close` raises too.
* **Checkpoints**: every ``checkpoint_every`` events or ``checkpoint_interval`` seconds
  (whichever comes first; by time even while no event arrives; and at close), signed in
  the same transaction as the events they anchor, with the key the signer returns at that
  moment (:mod:`tether.audit.checkpoints`). The rule counts from the last checkpoint of
  any node, read under the lock, so several nodes do not multiply checkpoints. Each
  checkpoint is also recorded, after its commit, in the head file
  (:mod:`tether.audit.head`), outside the database.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from tether.audit.canonical import event_columns
from tether.audit.checkpoints import Signer, sign_checkpoint
from tether.audit.events import AuditEvent
from tether.audit.head import default_head_file, write_head
from tether.audit.store import Checkpoint
from tether.audit.writers import (
    Batch,
    BatchWriter,
    Position,
    Synchronous,
    WriterError,
    Written,
    writer_for,
)

log = logging.getLogger(__name__)

_CONFLICT_RETRIES: Final = 8
_QUEUE_LIMIT: Final = 100_000


class AuditUnavailable(Exception):
    """The event could not be made durable: the action it audits must be refused."""


# A queued append, a plain tuple (one is made per event, on the event loop): the event's
# columns (tether.audit.canonical.event_columns: everything its canonical text is made of)
# and its waiter, which receives the event's :data:`Position`.
_Pending = tuple[tuple[Any, ...], asyncio.Future[Position]]


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
        writer: BatchWriter | None = None,
        head_file: Path | None = None,
    ) -> None:
        if checkpoint_every < 1 or checkpoint_interval <= 0 or max_batch < 1:
            raise ValueError("checkpoint_every, checkpoint_interval and max_batch must be > 0")
        self._writer = writer or writer_for(engine, sqlite_synchronous)
        # Where each checkpoint is also recorded (tether.audit.head); None: nowhere.
        self.head_file = head_file or default_head_file(engine.url)
        self._signer = signer
        self._every = checkpoint_every
        self._interval = checkpoint_interval
        self._max_batch = max_batch
        self._clock = clock
        self._queue: deque[_Pending] = deque()
        self._wake = asyncio.Event()  # set when the queue has something, or at close
        self._room = asyncio.Event()  # set while the queue is below its limit
        self._room.set()
        self._task: asyncio.Task[None] | None = None
        self._writing = asyncio.Lock()
        self._closing = False
        # True from start() until close() or the writer's failure: appends are taken. A
        # plain attribute, read once per append (a property call measured a microsecond).
        self.running = False
        self._unanchored = False  # events of ours after the last checkpoint
        self._anchor_time = clock()  # the last checkpoint's time, else when we started
        self.batches = 0  # committed batches, for the benchmark and tests
        self._head_next: Checkpoint | None = None  # committed, not yet in the head file
        self._head_task: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the writer's connection and start the writer task."""
        if self._task is not None:
            raise RuntimeError("the audit log is already started")
        await self._writer.open()
        self._task = asyncio.create_task(self._run(), name="tether-audit-writer")
        self.running = True

    async def close(self) -> None:
        """Stop taking appends, commit those queued, checkpoint, and close the connection."""
        if self._closing:
            return
        self._closing = True
        self.running = False
        try:
            if self._task is not None:
                self._wake.set()
                await self._task
                try:
                    await self.checkpoint()
                except AuditUnavailable as error:
                    log.warning("no checkpoint at close: %s", error)
        finally:
            await self._heads_recorded()
            await self._writer.close()

    # --- appending ------------------------------------------------------------------------

    async def append(self, event: AuditEvent) -> AuditEvent:
        """Append ``event``; return it as stored (``seq`` and hashes set) once committed.

        Raises :class:`AuditUnavailable` when it could not be committed. Cancelling the
        caller does not withdraw the event: it is written all the same.
        """
        seq, prev_hash, hash = await self.append_position(event)
        return event.chained(seq, prev_hash, hash)

    async def append_position(self, event: AuditEvent) -> Position:
        """:meth:`append`, answering only where the event landed (no copy of the event)."""
        if not self.running:
            raise AuditUnavailable("the audit log is not running")
        while len(self._queue) >= _QUEUE_LIMIT:
            self._room.clear()
            await self._room.wait()
            if not self.running:
                raise AuditUnavailable("the audit log stopped")
        # If the caller is cancelled, the future is cancelled with it; the writer still
        # writes the event and skips the cancelled waiter.
        return await self.submit(event)

    def submit(self, event: AuditEvent) -> asyncio.Future[Position]:
        """Queue ``event`` now, without waiting: the future answers where it landed once
        committed, or raises :class:`AuditUnavailable`. For events appended after their
        action (an exchange's outcome) that nobody waits for, with no task per event. It
        does not wait for room in the queue, as :meth:`append_position` does: callers
        queue at most one event per action they already waited for."""
        if not self.running:
            raise AuditUnavailable("the audit log is not running")
        done: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._queue.append((event_columns(event), done))
        self._wake.set()
        return done

    async def checkpoint(self) -> Checkpoint | None:
        """Sign a checkpoint of the head now; None when it is checkpointed already."""

        def due(seq: int, last: Checkpoint | None) -> bool:
            return last is None or last.seq < seq

        written = await self._write(Batch((), due, self._sign))
        if written.checkpoint is None:
            self._unanchored = False  # the head was checkpointed (maybe by another node)
        self._anchored(written.checkpoint)
        self._record_head(written.checkpoint)
        await self._heads_recorded()
        return written.checkpoint

    # --- the writer task ------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except BaseException as error:
            # A bug or a cancellation: nobody may wait forever for an event never written.
            self._closing = True
            self.running = False
            self._room.set()
            failure = AuditUnavailable(f"the audit writer stopped: {type(error).__name__}")
            self._fail(list(self._queue), failure)
            self._queue.clear()
            raise

    async def _loop(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wake.clear()
                timeout = self._idle_timeout()
                if timeout is None:  # nothing to anchor: no timer (and no task) per wait
                    await self._wake.wait()
                    continue
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    await self._timed_checkpoint()
                continue
            await self._commit(self._take_batch())

    def _idle_timeout(self) -> float | None:
        """Seconds until a checkpoint is due by time; None while everything is anchored."""
        if not self._unanchored:
            return None
        elapsed = (self._clock() - self._anchor_time).total_seconds()
        return max(0.0, self._interval - elapsed)

    def _take_batch(self) -> list[_Pending]:
        """Every event waiting, up to ``max_batch``. (Taking half after a rest, so that one
        half commits while the loop serves the other, was measured: it doubles the
        commits, and with a flush of a few milliseconds it lost more than it overlapped.)"""
        queue = self._queue
        size = min(self._max_batch, len(queue))
        batch = [queue.popleft() for _ in range(size)]
        self._room.set()
        return batch

    async def _commit(self, batch: list[_Pending]) -> None:
        try:
            written = await self._write(Batch([p[0] for p in batch], self._due, self._sign))
        except AuditUnavailable as failure:
            log.error("audit batch of %d events not committed: %s", len(batch), failure)
            self._fail(batch, failure)
            return
        self.batches += 1
        self._unanchored = written.checkpoint is None
        self._anchored(written.checkpoint)
        for pending, position in zip(batch, written.positions, strict=True):
            done = pending[1]
            if not done.done():
                done.set_result(position)
        self._record_head(written.checkpoint)

    @staticmethod
    def _fail(batch: list[_Pending], failure: AuditUnavailable) -> None:
        for pending in batch:
            done = pending[1]
            if not done.done():
                done.set_exception(failure)

    def _due(self, seq: int, last: Checkpoint | None) -> bool:
        """Whether a checkpoint is due once the head is event ``seq``, the last checkpoint
        (read under the chain lock) being ``last``: every ``checkpoint_every`` events or
        ``checkpoint_interval`` seconds. Pure: the writer asks it under the lock."""
        anchor = self._anchor_time if last is None else max(self._anchor_time, last.time)
        by_count = seq - (0 if last is None else last.seq) >= self._every
        return by_count or (self._clock() - anchor).total_seconds() >= self._interval

    def _sign(self, seq: int, hash: str) -> Checkpoint:
        """A checkpoint of event ``seq`` (hash ``hash``), signed now with the current key."""
        return sign_checkpoint(self._signer(), seq, hash, self._clock())

    def _anchored(self, checkpoint: Checkpoint | None) -> None:
        if checkpoint is not None:
            self._anchor_time, self._unanchored = checkpoint.time, False

    def _record_head(self, checkpoint: Checkpoint | None) -> None:
        """Record a committed checkpoint in the head file too (after the commit, so the
        file never runs ahead of the trail). In the background: the file's two flushes
        (file and directory) are not on the next batch's path. One task writes them in
        order, the newest pending one each time (``write_head`` never goes back anyway);
        a failure is logged, appends go on."""
        if checkpoint is None or self.head_file is None:
            return
        self._head_next = checkpoint
        if self._head_task is None or self._head_task.done():
            self._head_task = asyncio.create_task(self._write_heads(self.head_file))

    async def _write_heads(self, path: Path) -> None:
        while self._head_next is not None:
            checkpoint, self._head_next = self._head_next, None
            try:
                await asyncio.to_thread(write_head, path, checkpoint)
            except OSError as error:
                log.error("audit head file %s not written: %s", path, error)
            except Exception:  # a bug: the trail is the record, the head file a witness
                log.exception("audit head file %s not written", path)

    async def _heads_recorded(self) -> None:
        """Wait until every committed checkpoint so far is in the head file."""
        if self._head_task is not None:
            await asyncio.shield(self._head_task)

    async def _timed_checkpoint(self) -> None:
        try:
            await self.checkpoint()
        except AuditUnavailable as error:
            log.warning("audit checkpoint failed, retrying in a second: %s", error)
            retry_in = timedelta(seconds=max(0.0, self._interval - 1.0))
            self._anchor_time = self._clock() - retry_in

    async def _write(self, batch: Batch) -> Written:
        """Write ``batch``, again after a conflict with another writer."""
        for attempt in range(_CONFLICT_RETRIES):
            try:
                async with self._writing:
                    return await self._writer.write(batch)
            except WriterError as error:
                if error.outcome_unknown or (not error.transient and attempt > 0):
                    raise AuditUnavailable(f"audit trail unavailable: {error}") from error
                log.info("audit write failed (attempt %d), retrying: %s", attempt + 1, error)
            except Exception as error:  # whatever failed (a bug, the signer), the batch is refused
                log.exception("audit write failed")
                reason = f"{type(error).__name__}: {error}"
                raise AuditUnavailable(f"audit trail unavailable: {reason}") from error
            await asyncio.sleep(0.001 * 2**attempt)
        raise AuditUnavailable("audit trail unavailable: conflicts with another writer persist")
