"""The SQLite audit writer's own process: its protocol, what it does with broken input, and
how the trail behaves when the process dies, is interrupted, or meets another writer."""

from __future__ import annotations

import asyncio
import io
import json
import marshal
import os
import shutil
import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.audit.conftest import Trail, open_trail, sample, store_signing_key
from tether.audit import sqlite_process
from tether.audit.canonical import event_columns
from tether.audit.checkpoints import sign_checkpoint
from tether.audit.log import AuditUnavailable
from tether.audit.verify import verify_trail
from tether.audit.writers import _HEAD_AND_CHECKPOINT, SqliteWriter, _sqlite_checkpoint
from tether.identity.keys import SigningKey
from tether.store import Store

SHAPE = SqliteWriter("unused.db", "full")._shape  # the statements' shape, as the writer sends it
EMPTY = (None,) * 7  # the head and last checkpoint of an empty trail


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated database, copied for each test (migrating takes a while)."""
    path = tmp_path_factory.mktemp("template") / "t.db"

    async def migrate() -> None:
        store = await Store.open(f"sqlite+aiosqlite:///{path}")
        await store.close()

    asyncio.run(migrate())
    return path


def _database(template: Path, directory: Path) -> Path:
    path = directory / "t.db"
    shutil.copy(template, path)
    return path


def _frames(*messages: object) -> bytes:
    return b"".join(
        sqlite_process.HEADER.pack(len(body)) + body
        for body in (marshal.dumps(message) for message in messages)
    )


def _answers(data: bytes) -> list[object]:
    stream, answers = io.BytesIO(data), []
    while (answer := sqlite_process.read_message(stream)) is not None:
        answers.append(answer)
    return answers


def _serve(data: bytes) -> list[Any]:
    answers = io.BytesIO()
    sqlite_process.serve(io.BytesIO(data), answers)
    return _answers(answers.getvalue())


def _open(path: Path) -> tuple[object, ...]:
    return ("open", str(path), "full", 1000, _HEAD_AND_CHECKPOINT)


def _write(expect: object, *numbers: int, sign: bool = False) -> tuple[object, ...]:
    values = [value for i in numbers for value in event_columns(sample(i))]
    return ("write", expect, *SHAPE, values, sign)


def _stored(path: Path) -> list[str]:
    """The stored events' paths (their identity here), in chain order."""
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT action FROM audit_events ORDER BY seq").fetchall()
    return [json.loads(action)["path"] for (action,) in rows]


async def _verified(path: Path) -> int:
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        async with store.engine.connect() as conn:
            report = await verify_trail(conn)
    finally:
        await store.close()
    assert report.ok, report.findings[:3]
    return report.events


async def test_a_batch_is_chained_in_one_transaction_and_answers_the_new_head(
    template: Path, tmp_path: Path
) -> None:
    path = _database(template, tmp_path)
    answers = _serve(_frames(_open(path), ("begin",), _write(EMPTY, 0, 1, 2)))
    assert answers[0] == ("ok", ("wal", 2, 0))  # WAL, FULL, no automatic checkpoint
    assert answers[1] == ("ok", EMPTY)
    status, head, hashes = answers[2][1]
    assert status == "done" and head[0] == 3 and head[1] == hashes[-1] and len(hashes) == 3
    assert _stored(path) == ["/items/0", "/items/1", "/items/2"]
    assert await _verified(path) == 3  # the process's hashes are the canonical ones


async def test_a_stale_expectation_writes_nothing_and_keeps_the_lock(
    template: Path, tmp_path: Path
) -> None:
    path = _database(template, tmp_path)
    first = _serve(_frames(_open(path), _write(EMPTY, 0)))[1][1]
    assert first[0] == "done"
    # Planned on an empty trail while event 1 is there: refused, then planned on the head.
    answers = _serve(_frames(_open(path), _write(EMPTY, 5), _write(first[1], 6)))
    assert answers[1] == ("ok", ("stale", first[1]))
    assert answers[2][1][0] == "done"
    assert _stored(path) == ["/items/0", "/items/6"]
    assert await _verified(path) == 2


async def test_a_checkpoint_is_signed_by_the_parent_inside_the_transaction(
    template: Path, tmp_path: Path
) -> None:
    path = _database(template, tmp_path)
    key = SigningKey.generate(time.time())
    await store_signing_key_at(path, key)
    write = _write(EMPTY, 0, 1, sign=True)
    answers = _serve(_frames(_open(path), write))  # ends there: nothing is committed
    status, seq, digest = answers[1][1]
    assert (status, seq) == ("sign", 2)
    assert _stored(path) == []
    mark = sign_checkpoint(key, seq, digest, datetime.now(UTC))
    request = ("checkpoint", SqliteWriter("unused.db", "full")._insert_checkpoint,
               _sqlite_checkpoint(mark))  # fmt: skip
    answers = _serve(_frames(_open(path), write, request))
    status, head, hashes = answers[2][1]
    assert status == "done" and head[2] == 2 and head[3] == hashes[-1]  # the checkpoint row
    assert await _verified(path) == 2


async def store_signing_key_at(path: Path, key: SigningKey) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{path}")
    try:
        await store_signing_key(store.engine, key)
    finally:
        await store.close()


def test_an_error_rolls_the_whole_batch_back(template: Path, tmp_path: Path) -> None:
    path = _database(template, tmp_path)
    broken = list(_write(EMPTY, 0, 1))
    broken[-2][21 + 20] = None  # the second event's detail: NOT NULL in SQL
    answers = _serve(_frames(_open(path), tuple(broken), _write(EMPTY, 2)))
    assert answers[1][:2] == ("error", "integrity")
    assert answers[2][1][0] == "done"
    assert _stored(path) == ["/items/2"]


def test_malformed_requests_are_answered_not_fatal(template: Path, tmp_path: Path) -> None:
    path = _database(template, tmp_path)
    short = list(_write(EMPTY, 0))
    short[-2] = short[-2][:-1]  # not whole events
    answers = _serve(
        _frames(
            ("begin",),  # before open
            _open(path),
            ("drop everything",),
            ("checkpoint", "DELETE FROM audit_events", ()),  # no write waiting for it
            tuple(short),
            _write(EMPTY, sign=True),  # a checkpoint of an empty trail
            ("open", str(path), "off", 1000, _HEAD_AND_CHECKPOINT),  # a durability refused
            7,  # not a request at all
        )
    )
    assert [answer[0] for answer in answers] == ["error", "ok", *["error"] * 6]
    assert _stored(path) == []


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(min_value=0), noise=st.binary(max_size=64))
def test_a_cut_or_garbled_request_is_never_written(template: Path,
                                                   tmp_path_factory: pytest.TempPathFactory,
                                                   cut: int, noise: bytes) -> None:  # fmt: skip
    """Whatever arrives after a valid ``begin`` (a truncated write, random bytes, a bad
    length), the process ends without an exception, and commits only if the write request
    arrived whole (the noise may happen to complete it)."""
    path = _database(template, tmp_path_factory.mktemp("db"))
    write = _frames(_write(EMPTY, 0, 1))
    after_begin = write[: cut % len(write)] + noise
    _serve(_frames(_open(path), ("begin",)) + after_begin)
    assert _stored(path) == (["/items/0", "/items/1"] if after_begin.startswith(write) else [])


def _child_pid(trail: Trail) -> int:
    writer = trail.log._writer
    assert isinstance(writer, SqliteWriter)
    assert writer.pid is not None
    return writer.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0: look at its state.
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


async def _gone(pid: int) -> bool:
    for _ in range(200):
        if not _alive(pid):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_the_process_ends_with_the_log_and_ignores_terminal_signals(
    tmp_path: Path,
) -> None:
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        pid = _child_pid(trail)
        await trail.append(3)
        os.kill(pid, signal.SIGINT)  # a Ctrl-C reaches the whole process group
        os.kill(pid, signal.SIGTERM)  # so does a service stop
        await trail.append(3, start=3)
        assert _child_pid(trail) == pid
    finally:
        await trail.log.close()
        await trail.store.close()
    assert await _gone(pid)
    assert (await _verified(Path(trail.url.removeprefix("sqlite+aiosqlite:///")))) == 6


async def test_a_killed_writer_process_is_replaced_and_the_chain_goes_on(
    tmp_path: Path,
) -> None:
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        await trail.append(5)
        first = _child_pid(trail)
        os.kill(first, signal.SIGKILL)
        assert await _gone(first)
        # Between batches nothing was in flight: the next batch fails on the dead process
        # before anything was sent for it, and is written again through a new one.
        written = await trail.append(5, start=5)
        assert [e.seq for e in written] == [6, 7, 8, 9, 10]
        assert _child_pid(trail) != first
        assert (await trail.verify()).events == 10
    finally:
        await trail.log.close()
        await trail.store.close()


async def test_a_batch_sent_to_a_process_that_just_died_is_written_again(tmp_path: Path) -> None:
    """The process dies and the next batch starts before the event loop has seen its pipes
    close: the write fails (EPIPE) and asyncio reports the lost pipe two callbacks later,
    after ``drain`` returned. That batch never reached the process, so it is written again
    through a new one; it was refused as of unknown outcome (AuditUnavailable) before."""
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        await trail.append(5)
        first = _child_pid(trail)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(first) and time.monotonic() < deadline:
            time.sleep(0.001)  # blocking: the event loop runs no callback meanwhile
        assert not _alive(first)
        written = await trail.append(1, start=5)
        assert [e.seq for e in written] == [6]
        assert _child_pid(trail) != first
        assert (await trail.verify()).events == 6
    finally:
        await trail.log.close()
        await trail.store.close()


@pytest.mark.parametrize("checkpoint_due", [False, True])
async def test_a_batch_whose_commit_is_unknown_is_refused_not_written_twice(
    tmp_path: Path, checkpoint_due: bool
) -> None:
    """The process dies after the batch's write request left. Without a checkpoint due, it
    may have committed: the batch's appends fail (their actions are refused) rather than
    being written a second time. With one due, the request cannot commit before its
    checkpoint is signed: the batch is written again, once, through a new process. Either
    way the trail verifies and later appends go on."""
    every = 10 if checkpoint_due else 1000  # the batch takes the trail from 2 to 12 events
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db", checkpoint_every=every)
    try:
        await trail.append(2)
        pid = _child_pid(trail)
        writer = trail.log._writer
        assert isinstance(writer, SqliteWriter)
        child = writer._child
        assert child is not None and child.process.stdout is not None
        real_call, stdout = child.call, child.process.stdout
        real_read = stdout.readexactly
        armed = False

        async def call_stopped(request: tuple[object, ...], *, commits: bool = False) -> object:
            nonlocal armed
            if request[0] == "write" and not armed:
                os.kill(pid, signal.SIGSTOP)  # it cannot read the request, let alone commit
                armed = True
            return await real_call(request, commits=commits)

        async def read_after_kill(n: int) -> bytes:
            if armed:  # the request has left: now the process dies
                os.kill(pid, signal.SIGKILL)
            return await real_read(n)

        child.call = call_stopped  # type: ignore[method-assign]
        stdout.readexactly = read_after_kill  # type: ignore[method-assign]
        results = await asyncio.gather(
            *(trail.log.append(sample(i)) for i in range(2, 12)), return_exceptions=True
        )
        if checkpoint_due:
            assert [getattr(r, "seq", r) for r in results] == list(range(3, 13))
        else:
            assert all(isinstance(r, AuditUnavailable) for r in results), results
        first = 13 if checkpoint_due else 3  # (the killed request never committed)
        later = await trail.append(3, start=20)
        assert [e.seq for e in later] == [first, first + 1, first + 2]
        report = await trail.verify()
        assert report.ok and report.events == first + 2
    finally:
        await trail.log.close()
        await trail.store.close()


async def test_a_cancelled_round_trip_retires_the_process(tmp_path: Path) -> None:
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    writer = trail.log._writer
    assert isinstance(writer, SqliteWriter)
    try:
        await trail.append(2)
        child = writer._child
        assert child is not None
        task = asyncio.create_task(child.call(("begin",)))
        await asyncio.sleep(0)  # the request is on its way
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert child.gone  # its answer would be read by the next request: never reused
        assert await _gone(child.process.pid)
        written = await trail.append(2, start=2)  # through a new process
        assert [e.seq for e in written] == [3, 4]
    finally:
        await trail.log.close()
        await trail.store.close()


class _Name(str):
    """A str subclass, as a caller might pass (marshal takes exact types only)."""


class _Count(int):
    pass


async def test_values_of_subclasses_are_stored_as_their_base_type(tmp_path: Path) -> None:
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    try:
        event = sample(0, agent=_Name("bot"), target=_Name("db"), bytes_in=_Count(5))
        stored = await trail.log.append(event)
        assert (stored.seq, stored.agent, stored.bytes_in) == (1, "bot", 5)
        assert (await trail.verify()).events == 1
    finally:
        await trail.log.close()
        await trail.store.close()
