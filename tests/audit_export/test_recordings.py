"""Recordings: a real pty session recorded, read back, replayed, exported; crashes and caps."""

from __future__ import annotations

import gzip
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.audit_export.ptyshell import run_shell
from tether.audit.recordings import (
    Recorder,
    RecordingError,
    RecordingMeta,
    RecordingOptions,
    day_dir,
)
from tether.audit.recordings_play import output_text, plain_text, replay
from tether.audit.recordings_read import find_recording, iter_recordings, read_cast

T0 = datetime(2026, 11, 29, 10, 30, tzinfo=UTC)


class Ticks:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_real_pty_session_is_recorded_as_asciicast_v2(tmp_path: Path) -> None:
    meta = RecordingMeta(width=80, height=24, env={"TERM": "xterm", "SECRET": "x"}, agent="a1")
    recorder = Recorder.start("sess-pty", meta, root=tmp_path, now=T0)
    shown = run_shell(recorder, ["echo hello\n", "printf '\\033[31mred\\033[0m\\n'\n"])
    summary = recorder.close(exit_status=0)

    path = tmp_path / "2026" / "11" / "29" / "sess-pty.cast.gz"
    assert recorder.cast_path == path
    cast = read_cast(path)
    assert cast.complete
    assert cast.header["version"] == 2
    assert (cast.header["width"], cast.header["height"]) == (80, 24)
    assert cast.header["timestamp"] == int(T0.timestamp())
    assert cast.header["env"] == {"TERM": "xterm"}  # only TERM and SHELL are kept
    assert cast.header["tether"]["agent"] == "a1"
    assert output_text(cast.events).encode() == shown
    assert b"\x1b[31mred\x1b[0m" in shown
    times = [event.time for event in cast.events]
    assert times == sorted(times)
    assert summary.output_bytes == len(shown)
    assert summary.exit_status == 0 and not summary.truncated


def test_keystrokes_are_not_recorded_unless_asked(tmp_path: Path) -> None:
    quiet = Recorder.start("quiet", RecordingMeta(), root=tmp_path, now=T0)
    quiet.input(b"hunter2\n")
    quiet.output(b"ok\r\n")
    quiet.close()
    loud = Recorder.start(
        "loud", RecordingMeta(), root=tmp_path, now=T0, options=RecordingOptions(True)
    )
    loud.input(b"ls\n")
    loud.close()

    quiet_events = read_cast(quiet.cast_path).events
    assert [e.code for e in quiet_events] == ["o"]
    assert b"hunter2" not in gzip.decompress(quiet.cast_path.read_bytes())
    assert [(e.code, e.data) for e in read_cast(loud.cast_path).events] == [("i", "ls\n")]


def test_events_carry_the_elapsed_time_and_resizes(tmp_path: Path) -> None:
    ticks = Ticks()
    recorder = Recorder.start("timed", RecordingMeta(), root=tmp_path, now=T0, monotonic=ticks)
    recorder.output(b"a")
    ticks.now += 1.5
    recorder.resize(120, 40)
    ticks.now += 0.25
    recorder.output("b")
    recorder.close()
    events = read_cast(recorder.cast_path).events
    assert [(e.time, e.code, e.data) for e in events] == [
        (0.0, "o", "a"),
        (1.5, "r", "120x40"),
        (1.75, "o", "b"),
    ]


def test_a_utf8_character_split_across_chunks_stays_whole(tmp_path: Path) -> None:
    recorder = Recorder.start("utf8", RecordingMeta(), root=tmp_path, now=T0)
    for chunk in (b"caf", b"\xc3", b"\xa9 \xe2\x82", b"\xac"):
        recorder.output(chunk)
    recorder.close()
    assert output_text(read_cast(recorder.cast_path).events) == "café €"


def test_exec_output_is_capped_and_marked_truncated(tmp_path: Path) -> None:
    options = RecordingOptions(max_output_bytes=100)
    meta = RecordingMeta(command="yes")
    recorder = Recorder.start("capped", meta, root=tmp_path, now=T0, options=options)
    for _ in range(5):
        recorder.output(b"y\n" * 25)  # 50 bytes each
    summary = recorder.close(exit_status=141)
    cast = read_cast(recorder.cast_path)
    assert output_text(cast.events) == "y\n" * 50
    assert cast.events[-1].code == "m" and "truncated at 100 bytes" in cast.events[-1].data
    assert summary.truncated and summary.output_bytes == 100
    assert json.loads(recorder.cast_path.with_name("capped.json").read_text())["truncated"]
    assert cast.header["command"] == "yes"


def test_transfers_are_recorded_with_path_size_and_digest(tmp_path: Path) -> None:
    recorder = Recorder.start("sftp-1", RecordingMeta(protocol="sftp"), root=tmp_path, now=T0)
    digest = "ab" * 32
    recorder.transfer("/srv/data.csv", "download", 1234, digest)
    with pytest.raises(ValueError, match="sha256"):
        recorder.transfer("/x", "upload", 1, "not-a-digest")
    with pytest.raises(ValueError, match="direction"):
        recorder.transfer("/x", "sideways", 1, digest)  # type: ignore[arg-type]
    summary = recorder.close()
    assert summary.transfers == 1
    [record] = find_recording(tmp_path, "sftp-1").transfers()
    assert (record.path, record.direction, record.size, record.sha256) == (
        "/srv/data.csv",
        "download",
        1234,
        digest,
    )


def test_recordings_are_private_and_never_overwritten(tmp_path: Path) -> None:
    recorder = Recorder.start("once", RecordingMeta(), root=tmp_path, now=T0)
    recorder.output(b"first")
    recorder.close()
    with pytest.raises(RecordingError, match="exists already"):
        Recorder.start("once", RecordingMeta(), root=tmp_path, now=T0)
    assert output_text(read_cast(recorder.cast_path).events) == "first"
    assert stat.S_IMODE(recorder.cast_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(day_dir(tmp_path, T0).stat().st_mode) == 0o700
    summary_file = recorder.cast_path.with_name("once.json")
    assert stat.S_IMODE(summary_file.stat().st_mode) == 0o600


def test_window_changes_without_end_are_capped_like_output(tmp_path: Path) -> None:
    """Only output counted toward ``max_output_bytes``: an agent sending window changes
    (or, with record_input, keystrokes) without end grew its recording without bound,
    a compressed event and a write for each."""
    options = RecordingOptions(record_input=True, max_output_bytes=1000)
    recorder = Recorder.start("spam", RecordingMeta(), root=tmp_path, options=options, now=T0)
    for i in range(20_000):
        recorder.resize(80 + i % 50, 24)
        recorder.input(b"x")
    recorder.output(b"still recorded")
    summary = recorder.close()
    events = read_cast(recorder.cast_path).events
    assert sum(1 for e in events if e.code in "ri") < 400
    assert [e.data for e in events if e.code == "m"] == [
        "input and resize events truncated at 1000 bytes"
    ]
    assert output_text(events) == "still recorded" and summary.truncated


def test_every_directory_a_recording_creates_is_private(tmp_path: Path) -> None:
    """``mkdir(parents=True, mode=0o700)`` gives the mode to the last directory only: the
    recordings root and its year and month directories were created 0755 (umask 022), so
    any local user could list them. Every directory the recorder creates is 0700 now."""
    root = tmp_path / "data" / "recordings"
    old = os.umask(0o022)
    try:
        Recorder.start("s-1", RecordingMeta(), root=root, now=T0).close()
    finally:
        os.umask(old)
    day = day_dir(root, T0)
    for directory in (root, day.parent.parent, day.parent, day):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


@pytest.mark.parametrize("bad", ["../escape", "a/b", ".hidden", "", "x" * 200, "a\nb"])
def test_unsafe_session_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(RecordingError, match="invalid session id"):
        Recorder.start(bad, RecordingMeta(), root=tmp_path, now=T0)
    assert not any(tmp_path.parent.glob("escape*"))


def test_a_closed_recording_refuses_more_events(tmp_path: Path) -> None:
    recorder = Recorder.start("closed", RecordingMeta(), root=tmp_path, now=T0)
    recorder.close()
    with pytest.raises(RecordingError, match="closed"):
        recorder.output(b"late")


_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from tether.audit.recordings import Recorder, RecordingMeta
    recorder = Recorder.start("crashy", RecordingMeta(), root=Path(sys.argv[1]))
    i = 0
    while True:
        recorder.output(f"line {i}\\r\\n".encode())
        i += 1
        if i == 500:
            print("ready", flush=True)
    """
)


def test_a_recorder_killed_mid_session_leaves_a_readable_prefix(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    session = find_recording(tmp_path, "crashy")
    assert session.state == "incomplete"  # no summary: never closed
    cast = read_cast(session.cast_path)
    assert not cast.complete
    lines = plain_text(cast).splitlines()
    assert len(lines) >= 500
    assert lines == [f"line {i}" for i in range(len(lines))]  # a prefix, in order, no gap
    with pytest.raises(EOFError):
        gzip.decompress(session.cast_path.read_bytes())  # what a naive reader would do
    assert [s.session_id for s in iter_recordings(tmp_path)] == ["crashy"]


def test_replay_waits_the_recorded_pauses_scaled(tmp_path: Path) -> None:
    ticks = Ticks()
    recorder = Recorder.start("paced", RecordingMeta(), root=tmp_path, now=T0, monotonic=ticks)
    for pause, text in ((0.0, "a"), (2.0, "b"), (30.0, "c"), (1.0, "d")):
        ticks.now += pause
        recorder.output(text.encode())
    recorder.close()
    cast = read_cast(recorder.cast_path)
    written: list[str] = []
    sleeps: list[float] = []
    total = replay(cast, written.append, sleeps.append, speed=2.0, max_idle=5.0)
    assert "".join(written) == "abcd"
    assert sleeps == [1.0, 2.5, 0.5]
    assert total == 4.0


def test_a_failed_write_fails_every_later_one_and_close_still_closes_the_file(
    tmp_path: Path,
) -> None:
    """After a short write the gzip stream is in an unknown state: nothing more is written,
    every call says why, and the file is closed (no descriptor left open per session).
    The disk fills for real: the cast's descriptor is pointed at ``/dev/full``."""
    recorder = Recorder.start("full", RecordingMeta(), root=tmp_path, now=T0)
    fd = recorder._raw.fileno()
    device = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(device, fd)
    finally:
        os.close(device)
    with pytest.raises(RecordingError, match="could not be written: No space left on device"):
        recorder.output(b"x" * 100_000)
    with pytest.raises(RecordingError, match="No space left on device"):
        recorder.output(b"more")
    with pytest.raises(RecordingError, match="No space left on device"):
        recorder.close(0)
    with pytest.raises(OSError, match="Bad file descriptor"):
        os.fstat(fd)
    assert not (recorder.directory / "full.json").exists()
