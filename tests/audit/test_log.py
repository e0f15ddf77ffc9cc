"""The writer: durable hash-chained appends, group commit, checkpoints, append-only tables,
failing closed, and two writers on one database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.audit.conftest import Trail, open_trail, refused_statements, sample
from tether.audit import store
from tether.audit.canonical import GENESIS, stored_hash
from tether.audit.events import AuditEvent
from tether.audit.log import AuditLog, AuditUnavailable
from tether.identity.keys import SigningKey
from tether.store import Store


async def test_appends_are_chained_and_read_back_exactly(trail: Trail) -> None:
    odd = sample(
        0,
        target="tàrget \x00 \ud800 ☃",
        actor_chain=("alice", "bot"),
        user="alice",
        action={"nested": {"list": [1, 2.5, None, True, "é"], "b": {}}, "big": 2**62},
        detail={"why": "because"},
        bytes_in=0,
        bytes_out=10**12,
        rows=3,
        duration_ms=0.1,
        time=datetime(2026, 11, 29, 10, 0, 0, 7, tzinfo=UTC),
    )
    written = [await trail.log.append(odd), *await trail.append(4, start=1)]
    assert [e.seq for e in written] == [1, 2, 3, 4, 5]
    assert written[0].prev_hash == GENESIS
    for before, after in itertools.pairwise(written):
        assert after.prev_hash == before.hash
    assert all(stored_hash(e) == e.hash for e in written)
    async with trail.engine.connect() as conn:
        read = await store.events_after(conn, 0)
    assert read == written
    assert read[0].target == "tàrget \\x00 \\ud800 ☃"
    assert read[0].time == datetime(2026, 11, 29, 10, 0, 0, 7, tzinfo=UTC)
    assert (await trail.verify()).ok


async def test_concurrent_appends_share_commits_and_keep_one_chain(trail: Trail) -> None:
    written = await asyncio.gather(*(trail.log.append(sample(i)) for i in range(300)))
    assert sorted(e.seq for e in written) == list(range(1, 301))
    assert trail.log.batches < 300  # group commit: fewer transactions than events
    async with trail.engine.connect() as conn:
        read = await store.events_after(conn, 0, limit=1000)
    assert [e.id for e in read] == [e.id for e in sorted(written, key=lambda e: e.seq or 0)]
    report = await trail.verify()
    assert report.ok, report.findings
    assert report.events == 300


async def test_checkpoints_every_n_events_and_at_close(trail: Trail) -> None:
    await trail.append(25)
    async with trail.engine.connect() as conn:
        assert [c.seq for c in await store.checkpoints(conn)] == [10, 20]
    report = await trail.verify()
    assert (report.ok, report.unanchored, report.last_checkpoint_seq) == (True, 5, 20)
    assert report.keys == {trail.key.kid}
    await trail.log.close()
    async with trail.engine.connect() as conn:
        marks = await store.checkpoints(conn)
    assert [c.seq for c in marks] == [10, 20, 25]
    assert all(c.kid == trail.key.kid for c in marks)
    assert (await trail.verify()).unanchored == 0


async def test_a_checkpoint_comes_after_the_interval_even_without_new_events(
    sqlite_trail: Trail,
) -> None:
    log = AuditLog(sqlite_trail.engine, lambda: sqlite_trail.key, checkpoint_interval=0.2)
    await sqlite_trail.log.close()
    await log.start()
    try:
        await log.append(sample(0))
        deadline = time.monotonic() + 10
        marks: list[store.Checkpoint] = []
        while not marks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            async with sqlite_trail.engine.connect() as conn:
                marks = await store.checkpoints(conn)
        assert [c.seq for c in marks] == [1]
    finally:
        await log.close()


async def test_the_tables_refuse_update_and_delete(trail: Trail) -> None:
    await trail.append(12)
    await refused_statements(trail.engine, (
        "UPDATE audit_events SET target = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 12",
        "UPDATE audit_checkpoints SET hash = 'x'",
        "DELETE FROM audit_checkpoints",
    ))  # fmt: skip
    if trail.engine.dialect.name == "postgresql":
        with pytest.raises(DBAPIError, match="append-only"):
            async with trail.engine.begin() as conn:
                await conn.execute(text("TRUNCATE audit_events"))
    assert (await trail.verify()).events == 12


async def test_an_append_that_cannot_commit_fails_closed(trail: Trail) -> None:
    await trail.append(3)
    await trail.tamper("DROP TABLE audit_events")
    with pytest.raises(AuditUnavailable):
        await trail.log.append(sample(3))
    with pytest.raises(AuditUnavailable):
        await trail.auditor.revocation("admin", kind="agent", value="a", reason="r")


async def test_appending_after_close_is_refused(sqlite_trail: Trail) -> None:
    await sqlite_trail.log.close()
    with pytest.raises(AuditUnavailable, match="not running"):
        await sqlite_trail.log.append(sample(0))


async def test_a_cancelled_appender_still_gets_its_event_written(sqlite_trail: Trail) -> None:
    tasks = [asyncio.create_task(sqlite_trail.log.append(sample(i))) for i in range(50)]
    await asyncio.sleep(0)
    tasks[10].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await sqlite_trail.log.append(sample(50))
    async with sqlite_trail.engine.connect() as conn:
        assert await store.count_events(conn) == 51


async def test_two_writers_on_one_database_never_fork_the_chain(trail: Trail) -> None:
    """Two nodes (two engines, two writers, small batches) appending at once: one chain,
    no gap, and the writers really did take turns."""
    await trail.log.close()
    stores = [await Store.open(trail.url) for _ in range(2)]
    logs = [AuditLog(s.engine, lambda: trail.key, checkpoint_every=7, max_batch=8) for s in stores]
    for log in logs:
        await log.start()
    try:
        written = await asyncio.gather(
            *(asyncio.gather(*(log.append(sample(i, agent=f"node-{n}")) for i in range(400)))
              for n, log in enumerate(logs))
        )  # fmt: skip
    finally:
        for log, opened in zip(logs, stores, strict=True):
            await log.close()
            await opened.close()
    by_seq = sorted((e.seq or 0, e.agent) for e in [*written[0], *written[1]])
    assert [seq for seq, _ in by_seq] == list(range(1, 801))
    report = await trail.verify()
    assert report.ok, report.findings[:5]
    assert report.events == 800
    turns = sum(1 for a, b in itertools.pairwise(by_seq) if a[1] != b[1])
    # PostgreSQL queues advisory-lock waiters, so the writers take turns; SQLite's busy
    # handler sleeps and retries, and may let one writer finish first: either way, no fork.
    assert turns >= (2 if trail.engine.dialect.name == "postgresql" else 1)


async def test_the_sqlite_writer_uses_wal_and_the_chosen_synchronous(tmp_path: object) -> None:
    """The default is FULL (see test_the_default_sqlite_durability_is_full)."""
    path = f"{tmp_path}/t.db"
    trail = await open_trail(f"sqlite+aiosqlite:///{path}", sqlite_synchronous="normal")
    try:
        await trail.append(1)
        with sqlite3.connect(path) as fresh:
            assert fresh.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        writer = trail.log._writer
        assert writer.journal_mode == "wal"  # type: ignore[attr-defined]
        assert writer.synchronous_level == 1  # type: ignore[attr-defined]  # NORMAL
    finally:
        await trail.log.close()
        await trail.store.close()


async def _append_in_waves(trail: Trail, events: int, wave: int = 250) -> None:
    for start in range(0, events, wave):
        await asyncio.gather(*(trail.log.append(sample(i)) for i in range(start, start + wave)))


async def test_the_wal_is_checkpointed_in_the_background_not_by_the_commits(
    tmp_path: object,
) -> None:
    """The writer's own connection never checkpoints (a commit would wait for the copy);
    the background checkpointer keeps the WAL from holding the whole trail."""
    from tether.audit.writers import SQLITE_WAL_CHECKPOINT_EVENTS, SqliteWriter

    path = f"{tmp_path}/t.db"
    trail = await open_trail(f"sqlite+aiosqlite:///{path}", checkpoint_every=1000)
    writer = trail.log._writer
    assert isinstance(writer, SqliteWriter)
    before = Path(path).stat().st_size
    try:
        await _append_in_waves(trail, 6 * SQLITE_WAL_CHECKPOINT_EVENTS)
        assert writer.wal_autocheckpoint == 0  # as the writer process's connection reports
        if writer._wal_pending is not None:
            await asyncio.wait([writer._wal_pending])
        assert writer.wal_checkpoints >= 2  # 6 due; fewer when one is still running
        database = Path(path).stat().st_size
        # The checkpoints copied the WAL's pages into the file: without them the file would
        # not grow at all (every page of the 6,000 events would stay in the WAL). At least
        # 100 bytes an event (they take about 500). Comparing the file with the WAL's size
        # failed now and then: the WAL keeps the size of its largest stretch between two
        # checkpoints, which the timing of the background copy decides.
        grown = database - before
        assert grown > 100 * 6 * SQLITE_WAL_CHECKPOINT_EVENTS, (before, database)
        assert (await trail.verify()).events == 6 * SQLITE_WAL_CHECKPOINT_EVENTS
    finally:
        await trail.log.close()
        await trail.store.close()


async def test_a_failing_wal_checkpoint_is_logged_and_appends_go_on(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    from tether.audit.writers import SQLITE_WAL_CHECKPOINT_EVENTS, SqliteWriter

    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    writer = trail.log._writer
    assert isinstance(writer, SqliteWriter)
    try:
        await trail.append(1)
        writer._path = f"{tmp_path}/missing/t.db"  # the checkpointer's connection cannot open
        with caplog.at_level("WARNING", logger="tether.audit.writers"):
            await _append_in_waves(trail, 3 * SQLITE_WAL_CHECKPOINT_EVENTS)
            if writer._wal_pending is not None:
                await asyncio.wait([writer._wal_pending])
        assert writer.wal_checkpoints == 0
        assert "WAL checkpoint failed" in caplog.text
        assert (await trail.verify()).events == 1 + 3 * SQLITE_WAL_CHECKPOINT_EVENTS
    finally:
        await trail.log.close()
        await trail.store.close()


def test_an_in_memory_sqlite_database_is_refused() -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(ValueError, match="in-memory"):
        AuditLog(engine, lambda: None)  # type: ignore[arg-type,return-value]


async def test_event_with_a_non_utc_time_is_stored_in_utc(sqlite_trail: Trail) -> None:
    from datetime import timedelta, timezone

    local = datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    stored = await sqlite_trail.log.append(AuditEvent(kind="decision", time=local))
    assert stored.time == datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    assert stored.time.tzinfo is UTC


async def test_the_default_sqlite_durability_is_full(sqlite_trail: Trail) -> None:
    assert sqlite_trail.log._writer.synchronous_level == 2  # type: ignore[attr-defined]


async def test_a_failing_signer_refuses_the_batch_and_the_writer_carries_on(
    sqlite_trail: Trail,
) -> None:
    broken = True

    def signer() -> SigningKey:
        if broken:
            raise RuntimeError("key ring unavailable")
        return sqlite_trail.key

    await sqlite_trail.log.close()
    log = AuditLog(sqlite_trail.engine, signer, checkpoint_every=1)
    await log.start()
    try:
        with pytest.raises(AuditUnavailable, match="RuntimeError: key ring unavailable"):
            await log.append(sample(0))
        broken = False
        stored = await log.append(sample(1))
        assert stored.seq == 1  # the refused batch left nothing behind
    finally:
        await log.close()
    assert (await sqlite_trail.verify()).ok
