"""The delivery loop over a real store: backoff, errors, leases, cursors, status."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.audit_export.conftest import Trail, sample_event
from tether.audit.events import AuditEvent
from tether.audit.log import AuditLog
from tether.audit.sinks import base, cursors
from tether.audit.sinks.base import LEASE_SECONDS, DeliveryLoop, SinkError, sink_status
from tether.audit.sinks.config import Backoff, SinksConfig
from tether.identity.keys import SigningKey
from tether.store import Store


class FlakySink:
    """Refuses the first ``failures`` batches, then keeps what it gets."""

    def __init__(self, name: str = "flaky", failures: int = 0) -> None:
        self.name = name
        self.failures = failures
        self.batches: list[list[int]] = []
        self.closed = False

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise SinkError("receiver down")
        self.batches.append([event.seq or 0 for event in events])

    async def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 29, 12, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


async def test_failures_back_off_exponentially_and_are_recorded(trail: Trail) -> None:
    await trail.emit(7)
    sink = FlakySink(failures=4)
    backoff = Backoff(initial=1, max=5, multiplier=2, jitter=0.5)
    loop = DeliveryLoop(sink, trail.engine, batch_size=3, backoff=backoff, rng=lambda: 0.5)
    pauses = [await loop._step() for _ in range(4)]
    assert pauses == [0.75, 1.5, 3.0, 3.75]  # 1, 2, 4, 8 capped at 5; each less 25 % jitter
    [status] = await sink_status(trail.engine)
    assert (status.last_seq, status.lag, status.last_error) == (0, 7, "receiver down")
    assert await loop._step() == 0.0  # a full batch: look again at once
    assert await loop._step() == 0.0
    assert await loop._step() == loop.poll_interval  # the rest: wait for more
    assert sink.batches == [[1, 2, 3], [4, 5, 6], [7]]
    [status] = await sink_status(trail.engine)
    assert (status.last_seq, status.lag, status.last_error) == (7, 0, None)


async def test_one_node_at_a_time_delivers_a_sink(trail: Trail) -> None:
    await trail.emit(4)
    clock = Clock()
    first, second = FlakySink("shared"), FlakySink("shared")
    a = DeliveryLoop(first, trail.engine, node_id="a", clock=clock, batch_size=2)
    b = DeliveryLoop(second, trail.engine, node_id="b", clock=clock, batch_size=2)
    assert await a.deliver_once() == 2
    assert await b.deliver_once() is None  # a holds the lease
    clock.now += timedelta(seconds=LEASE_SECONDS + 1)  # a died and stopped renewing
    assert await b.deliver_once() == 2
    await trail.emit(1)
    assert await a.deliver_once() is None  # now b holds it
    assert await b.deliver_once() == 1
    assert first.batches == [[1, 2]] and second.batches == [[3, 4], [5]]


class SurprisingSink(FlakySink):
    """Raises what no handler expects (a bug, a parser's RecursionError), then works."""

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise RecursionError("maximum recursion depth exceeded")
        await super().deliver(events)


async def test_an_unexpected_exception_fails_the_batch_not_the_loop(trail: Trail) -> None:
    """Only SinkError and store errors were caught: anything else ended the sink's task for
    good, silently (``tether audit sinks`` said ``ok``). It now fails the batch, recorded,
    with backoff, and the loop delivers once the sink works."""
    await trail.emit(3)
    sink = SurprisingSink("odd", failures=2)
    loop = DeliveryLoop(sink, trail.engine, backoff=Backoff(initial=0.01, max=0.02))
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    try:
        for _ in range(200):
            if sink.batches:
                break
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await task
    assert sink.batches == [[1, 2, 3]]
    async with trail.engine.connect() as conn:
        row = await cursors.get_cursor(conn, "odd")
    assert row is not None and row.last_seq == 3


class SlowSink:
    """Takes ``seconds`` to acknowledge each batch (an HEC waiting for its indexer)."""

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds = name, seconds
        self.batches: list[list[int]] = []

    async def deliver(self, events: Sequence[AuditEvent]) -> None:
        await asyncio.sleep(self.seconds)
        self.batches.append([event.seq or 0 for event in events])

    async def close(self) -> None:
        pass


async def test_a_delivery_longer_than_the_lease_keeps_it(
    trail: Trail, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease (30 s) was taken once per batch, but a delivery may take longer (timeout up
    to 600 s, HEC's ack_timeout 60 s by default): another node then took the lease and sent
    the same events while the first was still sending them, then the next batch ahead of
    the first's. The lease is now renewed while a delivery is in flight."""
    monkeypatch.setattr(base, "LEASE_SECONDS", 0.6)
    await trail.emit(5)
    slow, other = SlowSink("shared", 2.0), SlowSink("shared", 0.0)
    a = DeliveryLoop(slow, trail.engine, node_id="a")
    b = DeliveryLoop(other, trail.engine, node_id="b")
    first = asyncio.create_task(a.deliver_once())
    await asyncio.sleep(1.3)  # two lease lengths into a's delivery
    assert await b.deliver_once() is None  # a still holds the lease
    assert await first == 5
    assert slow.batches == [[1, 2, 3, 4, 5]] and other.batches == []


async def test_the_cursor_never_moves_back(trail: Trail) -> None:
    now = datetime.now(UTC)
    async with trail.engine.begin() as conn:
        assert await cursors.ensure_cursor(conn, "s", 0, now) == 0
        assert await cursors.ensure_cursor(conn, "s", 99, now) == 0  # exists: unchanged
        assert await cursors.advance_cursor(conn, "s", 10, now, None)
        assert not await cursors.advance_cursor(conn, "s", 5, now, None)
        assert await cursors.acquire_lease(conn, "s", "node-1", now, 30)
        assert not await cursors.advance_cursor(conn, "s", 20, now, "node-2")  # not the holder
        row = await cursors.get_cursor(conn, "s")
    assert row is not None and row.last_seq == 10 and row.holder == "node-1"


async def test_a_new_sink_may_start_at_the_end(trail: Trail) -> None:
    await trail.emit(5)
    sink = FlakySink("late")
    loop = DeliveryLoop(sink, trail.engine, start="end")
    assert await loop.deliver_once() == 0
    await trail.emit(2)
    assert await loop.deliver_once() == 2
    assert sink.batches == [[6, 7]]


async def test_status_lists_configured_sinks_without_a_cursor(trail: Trail) -> None:
    await trail.emit(3)
    statuses = await sink_status(trail.engine, ["fresh"])
    assert [(s.name, s.last_seq, s.lag, s.updated_at) for s in statuses] == [("fresh", 0, 3, None)]


async def test_stopping_the_loop_releases_the_lease_and_closes_the_sink(trail: Trail) -> None:
    import asyncio

    await trail.emit(2)
    sink = FlakySink("s")
    loop = DeliveryLoop(sink, trail.engine, node_id="n")
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    while not sink.batches:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert sink.closed
    async with trail.engine.connect() as conn:
        row = await cursors.get_cursor(conn, "s")
    assert row is not None and row.holder is None and row.last_seq == 2


def test_sink_config_validation() -> None:
    good = {"name": "a", "kind": "jsonl", "path": "/tmp/a.jsonl"}
    SinksConfig.model_validate({"sinks": [good]})
    with pytest.raises(ValueError, match="unique"):
        SinksConfig.model_validate({"sinks": [good, good]})
    with pytest.raises(ValueError, match="exactly one of token"):
        SinksConfig.model_validate({"sinks": [{"name": "h", "kind": "hec", "url": "https://x"}]})
    with pytest.raises(ValueError, match="kind"):
        SinksConfig.model_validate({"sinks": [{"name": "x", "kind": "kafka"}]})
    with pytest.raises(ValueError, match="name"):
        SinksConfig.model_validate({"sinks": [{**good, "name": "Bad Name"}]})
    secret = {"name": "w", "kind": "webhook", "url": "https://x", "secret": "s3cret"}
    parsed = SinksConfig.model_validate({"sinks": [secret]})
    assert "s3cret" not in repr(parsed)


@given(
    initial=st.floats(0.01, 10),
    cap=st.floats(0.01, 100),
    multiplier=st.floats(1, 10),
    jitter=st.floats(0, 1),
    attempt=st.integers(0, 10_000),
    random=st.floats(0, 1, exclude_max=True),
)
def test_backoff_is_capped_and_jittered_downwards(
    initial: float, cap: float, multiplier: float, jitter: float, attempt: int, random: float
) -> None:
    backoff = Backoff(initial=initial, max=cap, multiplier=multiplier, jitter=jitter)
    delay = backoff.delay(attempt, random)
    base = min(cap, initial * multiplier ** min(attempt, 64))
    assert 0 < delay <= cap
    assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9
    assert backoff.delay(attempt + 1, 0) >= backoff.delay(attempt, 0) - 1e-9


async def test_cursors_and_leases_on_both_backends(store_url: str) -> None:
    store = await Store.open(store_url)
    key = SigningKey.generate(time.time())
    log = AuditLog(store.engine, lambda: key)
    await log.start()
    try:
        for i in range(5):
            await log.append(sample_event(i))
        clock = Clock()
        first, second = FlakySink("pg", failures=1), FlakySink("pg")
        a = DeliveryLoop(first, store.engine, node_id="a", clock=clock, batch_size=3)
        b = DeliveryLoop(second, store.engine, node_id="b", clock=clock, batch_size=3)
        assert await a._step() > 0  # refused: backoff, error recorded
        [status] = await sink_status(store.engine)
        assert (status.last_seq, status.lag, status.last_error) == (0, 5, "receiver down")
        assert await a.deliver_once() == 3
        assert await b.deliver_once() is None
        assert await a.deliver_once() == 2
        assert first.batches == [[1, 2, 3], [4, 5]] and second.batches == []
        statuses = await sink_status(store.engine, ["pg", "other"])
        assert [(s.name, s.last_seq, s.lag, s.last_error) for s in statuses] == [
            ("other", 0, 5, None),
            ("pg", 5, 0, None),
        ]
    finally:
        await log.close()
        await store.close()
