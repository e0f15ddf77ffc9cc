"""The SQLite audit writer's own process: its protocol, what it does with broken input, and
how the trail behaves when the process dies, is interrupted, or meets another writer."""

from __future__ import annotations

import asyncio
import io
import marshal
import os
import signal
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.audit.conftest import Trail, open_trail, sample
from tether.audit import sqlite_process
from tether.audit.log import AuditUnavailable
from tether.audit.writers import SqliteWriter

HEAD_SQL = "SELECT max(n), NULL, NULL, NULL, NULL, NULL, NULL FROM t"
INSERT = ("INSERT INTO t (n, s) VALUES (?, ?)", "(?, ?)")


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


def _serve(path: Path, data: bytes) -> list[object]:
    answers = io.BytesIO()
    sqlite_process.serve(io.BytesIO(data), answers)
    return _answers(answers.getvalue())


def _database(tmp_path: Path) -> Path:
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE t (n INTEGER PRIMARY KEY, s TEXT)")
    return path


def _open(path: Path) -> tuple[object, ...]:
    return ("open", str(path), "full", 1000, HEAD_SQL)


def _write(expect: object, *rows: tuple[int, str]) -> tuple[object, ...]:
    params = [value for row in rows for value in row]
    return ("write", expect, *INSERT, 2, 2, params, "", ())


def _rows(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT n, s FROM t ORDER BY n").fetchall()


def test_a_batch_is_written_in_one_transaction_and_answers_the_new_head(tmp_path: Path) -> None:
    path = _database(tmp_path)
    answers = _serve(
        path,
        _frames(_open(path), ("begin",), _write(None, (1, "a"), (2, "b"), (3, "c"))),
    )
    assert answers[0] == ("ok", ("wal", 2, 0))  # WAL, FULL, no automatic checkpoint
    assert answers[1] == ("ok", (None,) * 7)
    assert answers[2] == ("ok", ("done", (3, None, None, None, None, None, None)))
    assert _rows(path) == [(1, "a"), (2, "b"), (3, "c")]


def test_a_stale_expectation_writes_nothing_and_keeps_the_lock(tmp_path: Path) -> None:
    path = _database(tmp_path)
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO t VALUES (7, 'other writer')")
    expected = (5, None, None, None, None, None, None)
    answers = _serve(
        path,
        _frames(_open(path), _write(expected, (6, "x")), _write(None, (8, "y"))),
    )
    assert answers[1] == ("ok", ("stale", (7, None, None, None, None, None, None)))
    assert answers[2] == ("ok", ("done", (8, None, None, None, None, None, None)))
    assert _rows(path) == [(7, "other writer"), (8, "y")]


def test_an_error_rolls_the_whole_batch_back(tmp_path: Path) -> None:
    path = _database(tmp_path)
    answers = _serve(
        path,
        _frames(
            _open(path),
            ("begin",),
            _write(None, (1, "a"), (1, "duplicate")),
            ("begin",),
            _write(None, (2, "b")),
        ),
    )
    assert answers[2][:2] == ("error", "integrity")  # type: ignore[index]
    assert answers[4] == ("ok", ("done", (2, None, None, None, None, None, None)))
    assert _rows(path) == [(2, "b")]


def test_malformed_requests_are_answered_not_fatal(tmp_path: Path) -> None:
    path = _database(tmp_path)
    answers = _serve(
        path,
        _frames(
            ("begin",),  # before open
            _open(path),
            ("drop everything",),
            _write(None, (1, "a")),  # write without begin
            ("write", None, *INSERT, 2, 2, [1, "a", 2], "", ()),  # not whole rows
            ("open", str(path), "off", 1000, HEAD_SQL),  # a durability it refuses
        ),
    )
    assert [answer[0] for answer in answers] == ["error", "ok", "error", "error", "error", "error"]  # type: ignore[index]
    assert _rows(path) == []


@settings(max_examples=200, deadline=None)
@given(cut=st.integers(min_value=0), noise=st.binary(max_size=64))
def test_a_cut_or_garbled_request_is_never_written(tmp_path_factory: pytest.TempPathFactory,
                                                   cut: int, noise: bytes) -> None:  # fmt: skip
    """Whatever arrives after a valid ``begin`` (a truncated write, random bytes, a bad
    length), the process ends without an exception, and commits only if the write request
    arrived whole (the noise may happen to complete it)."""
    path = _database(tmp_path_factory.mktemp("db"))
    write = _frames(_write(None, (1, "a"), (2, "b")))
    after_begin = write[: cut % len(write)] + noise
    _serve(path, _frames(_open(path), ("begin",)) + after_begin)
    assert _rows(path) == ([(1, "a"), (2, "b")] if after_begin.startswith(write) else [])


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
    assert (await open_and_verify(trail.url)) == 6


async def open_and_verify(url: str) -> int:
    from tether.audit.verify import verify_trail
    from tether.store import Store

    store = await Store.open(url)
    try:
        async with store.engine.connect() as conn:
            report = await verify_trail(conn)
    finally:
        await store.close()
    assert report.ok, report.findings[:3]
    return report.events


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


async def test_a_batch_whose_commit_is_unknown_is_refused_not_written_twice(
    tmp_path: Path,
) -> None:
    """The process dies after the batch's write request left: it may or may not have
    committed. The batch's appends fail (their actions are refused) rather than being
    written a second time; the trail still verifies and later appends go on."""
    trail = await open_trail(f"sqlite+aiosqlite:///{tmp_path}/t.db")
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
        assert results and all(isinstance(r, AuditUnavailable) for r in results), results
        later = await trail.append(3, start=20)
        assert [e.seq for e in later] == [3, 4, 5]  # the killed batch never committed
        report = await trail.verify()
        assert report.ok and report.events == 5
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
