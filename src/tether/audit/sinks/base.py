"""Delivering the audit trail to a sink: the cursor, the loop, the backoff, the status.

One :class:`DeliveryLoop` runs per configured sink. It reads the events after the sink's
cursor (:func:`tether.audit.store.events_after`), hands them to the sink as one batch, and
moves the cursor to the batch's last ``seq`` only when :meth:`Sink.deliver` returned, that
is once the receiver acknowledged the batch (each sink says what acknowledgement means
for its protocol). While deliveries fail it retries the same position with exponential
backoff and jitter, capped (``backoff.max``, 60 s by default), recording the error on the
cursor row for ``tether audit sinks``.

Guarantees, and why:

* **At least once, in order, no gap.** Events are read in ``seq`` order from a committed
  trail whose ``seq`` has no holes, and the cursor moves only after an acknowledgement,
  never past an event that was not delivered. A crash between the receiver's
  acknowledgement and the cursor update redelivers that one batch: duplicates happen only
  as a whole unacknowledged batch, and receivers can drop them by ``metadata.uid`` (the
  event id); not by ``metadata.sequence`` alone, which a database put back from a backup
  gives again to new events.
* **Never skip, even a poison event.** A receiver that keeps refusing a batch blocks its
  sink (and only its sink), visibly (``last_error``, growing lag), rather than losing
  evidence silently. Any exception of a delivery, expected or not, fails that batch the
  same way: the loop itself never ends but when stopped.
* **Survives restarts** because the cursor is in the store, and **several nodes** because
  a lease (:mod:`.cursors`) lets one node at a time deliver each sink. The lease is renewed
  every third of its length while a batch is in flight, since a delivery may outlast it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Protocol
from urllib.parse import urlsplit

import httpx
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.audit import store
from tether.audit.events import AuditEvent
from tether.audit.sinks import cursors
from tether.audit.sinks.config import Backoff

log = logging.getLogger(__name__)

LEASE_SECONDS: Final = 30.0

Fetch = Callable[[AsyncConnection, int, int], Awaitable[list[AuditEvent]]]


def display_url(url: str) -> str:
    """``url`` as logs and errors name it: scheme, host, port and path, without the user,
    password, query and fragment, any of which may hold a credential."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return "(unparsable URL)"
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{parts.path}"


def scrub(text: str, url: str) -> str:
    """``text`` (a library's error message) with ``url`` and its credential-bearing parts
    replaced, in case the message quotes them."""
    parts = urlsplit(url)
    secrets = [url, parts.query, parts.fragment, parts.username or "", parts.password or ""]
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 3:  # shorter would blank out ordinary words
            text = text.replace(secret, display_url(url) if secret == url else "***")
    return text


class SinkError(Exception):
    """A batch was not acknowledged (receiver down, refused, timed out): retry it later."""


REQUEST_TIMEOUTS: Final = 4  # a whole HTTP exchange: at most this many times ``timeout``
MAX_ANSWER_BYTES: Final = 65536


async def post_capped(
    client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, bytes]:
    """POST ``body`` and read the answer: ``(status, its first MAX_ANSWER_BYTES)``.

    httpx's timeout is per operation: a receiver that trickles its answer a byte at a time
    held a delivery (and, with the lease renewed meanwhile, the sink) without end; and a
    whole answer was read into memory, however long. The exchange now has one deadline,
    ``REQUEST_TIMEOUTS * timeout``, and the answer is read raw (``identity`` asked, no
    decompression) up to a cap. Raises ``httpx.HTTPError`` or :class:`TimeoutError`.
    """
    headers = {**headers, "Accept-Encoding": "identity"}
    async with asyncio.timeout(timeout * REQUEST_TIMEOUTS):
        async with client.stream("POST", url, content=body, headers=headers) as response:
            data = bytearray()
            async for chunk in response.aiter_raw():
                data += chunk
                if len(data) >= MAX_ANSWER_BYTES:
                    break
            return response.status_code, bytes(data[:MAX_ANSWER_BYTES])


class TooLarge(SinkError):
    """The receiver refused the request as too large (HTTP 413)."""


# Sends ``events``, each event's OCSF JSON shrunk to at most ``budget`` octets when given.
Send = Callable[[Sequence[AuditEvent], int | None], Awaitable[None]]
MIN_EVENT_BUDGET: Final = 1024


async def deliver_fitting(send: Send, events: Sequence[AuditEvent]) -> None:
    """``send(events, None)``; on :class:`TooLarge` the batch is sent in halves, in order,
    and a single event still too large is sent shrunk (:func:`.rfc5424.shrink_ocsf`, marked
    ``truncated``), its budget halved until the receiver takes it.

    A receiver's body limit (HTTP 413, a proxy's 1 MiB) used to refuse the same batch
    forever: one event an agent made large enough stopped the sink for good, and every
    event after it stayed out of the SIEM. A half that went through is sent again if the
    other fails (at least once, in order); the whole event is always kept in Tether.
    """
    try:
        await send(events, None)
        return
    except TooLarge:
        if len(events) == 1:
            await _send_shrunk(send, events)
            return
    middle = len(events) // 2
    await deliver_fitting(send, events[:middle])
    await deliver_fitting(send, events[middle:])


async def _send_shrunk(send: Send, events: Sequence[AuditEvent]) -> None:
    from tether.audit.ocsf import to_ocsf
    from tether.audit.sinks.rfc5424 import ocsf_message

    budget = len(ocsf_message(to_ocsf(events[0]))) // 2
    while True:
        try:
            await send(events, max(budget, MIN_EVENT_BUDGET))
            return
        except TooLarge:
            if budget <= MIN_EVENT_BUDGET:
                raise
            budget //= 2


class Sink(Protocol):
    """Where a sink's batches go. ``deliver`` returns only once the receiver acknowledged
    the whole batch, and raises :class:`SinkError` otherwise."""

    name: str

    async def deliver(self, events: Sequence[AuditEvent]) -> None: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SinkStatus:
    """One sink's progress, as ``tether audit sinks`` shows it."""

    name: str
    last_seq: int
    head_seq: int
    updated_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    holder: str | None

    @property
    def lag(self) -> int:
        """Events in the trail that the sink has not acknowledged yet."""
        return max(0, self.head_seq - self.last_seq)


async def sink_status(engine: AsyncEngine, configured: Iterable[str] = ()) -> list[SinkStatus]:
    """The status of every sink with a cursor, and of ``configured`` sinks without one yet
    (at ``last_seq`` 0); sorted by name."""
    async with engine.connect() as conn:
        head = (await store.chain_head(conn)).seq
        rows = {row.name: row for row in await cursors.all_cursors(conn)}
    statuses = [
        SinkStatus(
            name=row.name,
            last_seq=row.last_seq,
            head_seq=head,
            updated_at=row.updated_at,
            last_error=row.last_error,
            last_error_at=row.last_error_at,
            holder=row.holder,
        )
        for row in rows.values()
    ]
    statuses += [
        SinkStatus(name, 0, head, None, None, None, None) for name in set(configured) - rows.keys()
    ]
    return sorted(statuses, key=lambda status: status.name)


class DeliveryLoop:
    """Delivers one sink from its cursor until stopped; see the module docstring."""

    def __init__(
        self,
        sink: Sink,
        engine: AsyncEngine,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        backoff: Backoff | None = None,
        start: str = "beginning",
        node_id: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: Callable[[], float] = random.random,
        fetch: Fetch = store.events_after,
    ) -> None:
        self.sink = sink
        self.engine = engine
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.backoff = backoff or Backoff()
        self.start = start
        self.node_id = node_id or uuid.uuid4().hex
        self.failures = 0  # consecutive failed deliveries
        self.delivered = 0  # events acknowledged since start
        self._clock = clock
        self._rng = rng
        self._fetch = fetch
        self._wake = asyncio.Event()
        self._gap_reported = 0  # the first seq after the last gap logged

    def wake(self) -> None:
        """New events were appended: look now rather than at the next poll."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set; the batch in flight is finished first."""
        try:
            while not stop.is_set():
                pause = await self._step()
                if pause > 0:
                    await self._sleep(stop, pause)
        finally:
            with contextlib.suppress(SQLAlchemyError, OSError):
                async with self.engine.begin() as conn:
                    await cursors.release_lease(conn, self.sink.name, self.node_id)
            await self.sink.close()

    async def _step(self) -> float:
        """One round; returns how long to wait before the next."""
        try:
            delivered = await self.deliver_once()
        except SinkError as error:
            await self._failed(str(error) or type(error).__name__)
            return self.backoff.delay(self.failures - 1, self._rng())
        except (SQLAlchemyError, OSError) as error:  # the store itself: retry the same way
            log.warning("audit sink %s: store error: %s", self.sink.name, error)
            self.failures += 1
            return self.backoff.delay(self.failures - 1, self._rng())
        except Exception as error:
            # A sink's bug or a receiver's surprise (a 200 nested too deep for the JSON
            # parser): this batch failed, visibly, and the loop goes on. Ending it would
            # stop the sink silently until a restart.
            log.exception("audit sink %s: unexpected error", self.sink.name)
            await self._failed(f"{type(error).__name__}: {error}")
            return self.backoff.delay(self.failures - 1, self._rng())
        if delivered is None:
            return self.poll_interval  # another node delivers this sink
        self.failures = 0
        return 0.0 if delivered == self.batch_size else self.poll_interval

    async def deliver_once(self) -> int | None:
        """Deliver the next batch (up to ``batch_size`` events); returns how many were
        acknowledged, or None when another node holds the sink's lease. Raises
        :class:`SinkError` when the receiver did not acknowledge."""
        async with self.engine.connect() as conn:  # reading only: no write lock while idle
            start = await self._start_seq(conn)
            cursor = await cursors.ensure_cursor(conn, self.sink.name, start, self._clock())
            events = await self._fetch(conn, cursor, self.batch_size)
            head = None if events else (await store.chain_head(conn)).seq
            await conn.commit()
        if not events:
            if head is not None and cursor > head:
                # Only a changed cursor row gets there: the sink would wait, "ok" and at lag 0,
                # then skip every event up to the cursor. Failing makes it seen meanwhile.
                raise SinkError(
                    f"the cursor ({cursor}) is past the trail's last event ({head}): the "
                    "events up to it would never be sent (was the cursor row changed?)"
                )
            return 0
        first = events[0].seq
        if first is not None and first > cursor + 1 and first != self._gap_reported:
            self._gap_reported = first  # once, not at every retry of the batch
            self._skipped(cursor + 1, first - 1)
        async with self.engine.begin() as conn:
            held = await cursors.acquire_lease(
                conn, self.sink.name, self.node_id, self._clock(), LEASE_SECONDS
            )
            row = await cursors.get_cursor(conn, self.sink.name)
        if not held:
            return None
        if row is None or row.last_seq != cursor:
            return 0  # another node moved it meanwhile: read again from where it is
        renewing = asyncio.create_task(self._renew_lease())
        try:
            await self.sink.deliver(events)
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
        last = events[-1].seq
        assert last is not None
        async with self.engine.begin() as conn:
            await cursors.advance_cursor(conn, self.sink.name, last, self._clock(), self.node_id)
        self.delivered += len(events)
        return len(events)

    def _skipped(self, first: int, last: int) -> None:
        """Events the sink's cursor has not passed are gone from the trail: ``tether audit
        prune`` took them (a sink that starts at ``beginning`` after a prune, or one whose
        cursor row was deleted). They cannot be sent; at least the operator is told, since
        the receiver sees a gap in ``metadata.sequence`` and nothing else says why."""
        log.warning(
            "audit sink %s: events %d to %d are no longer in the trail (pruned: they are in "
            "the archives of tether audit prune) and were not sent to this sink",
            self.sink.name, first, last,
        )  # fmt: skip

    async def _renew_lease(self) -> None:
        """Keep the lease while a delivery is in flight: one may outlast it (a timeout of
        up to 600 s, an indexer acknowledgement), and another node must not take the sink
        and send the same events, or the next ones, meanwhile."""
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            with contextlib.suppress(SQLAlchemyError, OSError):
                async with self.engine.begin() as conn:
                    await cursors.acquire_lease(
                        conn, self.sink.name, self.node_id, self._clock(), LEASE_SECONDS
                    )

    async def _start_seq(self, conn: AsyncConnection) -> int:
        if self.start == "end":
            return (await store.chain_head(conn)).seq
        return 0

    async def _failed(self, message: str) -> None:
        message = cursors.printable(message)  # receivers' text: no escapes into terminals
        self.failures += 1
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(level, "audit sink %s: delivery failed: %s", self.sink.name, message)
        with contextlib.suppress(SQLAlchemyError, OSError):
            async with self.engine.begin() as conn:
                await cursors.record_error(conn, self.sink.name, message, self._clock())

    async def _sleep(self, stop: asyncio.Event, seconds: float) -> None:
        self._wake.clear()
        waiters = [asyncio.ensure_future(stop.wait())]
        if self.failures == 0:  # while failing, a wake-up must not cut the backoff short
            waiters.append(asyncio.ensure_future(self._wake.wait()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
