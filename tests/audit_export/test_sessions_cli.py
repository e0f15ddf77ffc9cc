"""``tether sessions`` on recordings of a real pty session.

Replay into a pipe runs the installed ``tether`` command; the other commands run in process
(``CliRunner``) since each start of the command costs seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.audit_export.ptyshell import run_shell
from tether.audit.events import AuditEvent
from tether.audit.log import AuditLog
from tether.audit.recordings import Recorder, RecordingMeta
from tether.audit.recordings_read import parse_cast
from tether.cli.main import app
from tether.identity.keys import SigningKey
from tether.store import Store

T0 = datetime(2026, 11, 28, 23, 59, tzinfo=UTC)


@pytest.fixture
def recorded(tmp_path: Path) -> tuple[Path, bytes]:
    """A recordings directory holding one real bash session; and the bytes it showed."""
    root = tmp_path / "data" / "recordings"
    meta = RecordingMeta(agent="deploy-bot", target="web-1", user="alice")
    recorder = Recorder.start("s-42", meta, root=root, now=T0)
    shown = run_shell(recorder, ["printf '\\033[1;32mgreen\\033[0m\\n'\n", "sleep 0.3\n"])
    recorder.transfer("/etc/motd", "download", 12, "0" * 64)
    recorder.close(exit_status=0)
    return root, shown


def _tether(
    tether_bin: Path, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(tether_bin), "sessions", *args], capture_output=True, env=env, timeout=60
    )


class Result:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(env: dict[str, str] | None, *args: str) -> Result:
    result = CliRunner().invoke(app, ["sessions", *args], env=env)
    return Result(result.exit_code, result.stdout_bytes, result.stderr_bytes)


def test_replay_into_a_pipe_reproduces_the_output_bytes(
    recorded: tuple[Path, bytes], tether_bin: Path, clean_env: dict[str, str]
) -> None:
    root, shown = recorded
    args = ("replay", "s-42", "--recordings", str(root), "-s", "1000")
    done = _tether(tether_bin, clean_env, *args, "--raw")
    assert done.returncode == 0, done.stderr
    assert done.stdout == shown
    safe = _tether(tether_bin, clean_env, *args)  # bash's bracketed-paste mode etc. dropped
    assert safe.returncode == 0, safe.stderr
    assert b"\x1b[1;32mgreen\x1b[0m" in safe.stdout and b"\x1b[?2004h" not in safe.stdout


# What an agent can print to attack whoever replays its session: a clipboard write
# (OSC 52), a title, a hyperlink, requests the terminal answers as if typed (DSR, DA,
# DECRQSS, title report), mouse reporting, a full reset, 8-bit C1 forms, and an OSC 52
# split across two output events.
HOSTILE = [
    b"hello \x1b[1;31mred\x1b[0m\r\n",
    b"\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;owned\x1b\\\x1b]8;;https://evil/\x07link\x1b]8;;\x07\r\n",
    b"\x1b[6n\x1b[c\x1b[21t\x1bP$qm\x1b\\\x1b[?1000h\x1bc",
    "\x9d0;c1\x9c\x9b6n".encode(),
    b"split \x1b]5",
    b"2;c;ZXZpbA==\x07done\r\n",
]


def test_replay_drops_what_reaches_beyond_the_screen_unless_raw(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    """An agent's output used to be replayed raw into the investigator's terminal: OSC 52
    set the clipboard, titles changed, DSR/DA/DECRQSS made the terminal type answers."""
    root = tmp_path / "recordings"
    recorder = Recorder.start("s-evil", RecordingMeta(agent="bot"), root=root, now=T0)
    for chunk in HOSTILE:
        recorder.output(chunk)
    recorder.close(exit_status=0)
    args = ("replay", "s-evil", "--recordings", str(root), "-s", "1000")
    done = _tether(tether_bin, clean_env, *args)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == "hello \x1b[1;31mred\x1b[0m\r\nlink\r\nsplit done\r\n"
    raw = _tether(tether_bin, clean_env, *args, "--raw")
    assert raw.stdout == b"".join(HOSTILE)


def test_export_cast_escapes_c1_controls(tmp_path: Path) -> None:
    """JSON leaves U+009B (CSI) and U+009D (OSC) unescaped; printed to a terminal the
    exported cast would run them. They are JSON escapes now, and the cast reads the same."""
    root = tmp_path / "recordings"
    recorder = Recorder.start("s-c1", RecordingMeta(), root=root, now=T0)
    recorder.output("\x9d0;owned\x9c\x9b6n\x7fok".encode())
    recorder.close(exit_status=0)
    done = _run(None, "export", "s-c1", "--recordings", str(root))
    assert done.returncode == 0, done.stderr
    assert not any(0x7F <= ord(c) <= 0x9F for c in done.stdout.decode())
    cast = parse_cast(done.stdout)
    assert "".join(e.data for e in cast.events) == "\x9d0;owned\x9c\x9b6n\x7fok"


def test_replay_takes_the_recorded_time_at_speed_one(
    recorded: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pauses the command asks for are read off the real clock's ``sleep`` (which it
    still calls): comparing two runs' wall times failed on a loaded machine."""
    root, _ = recorded
    args = ("replay", "s-42", "--recordings", str(root))
    real_sleep, pauses = time.sleep, []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    started = time.monotonic()
    assert _run(None, *args).returncode == 0
    assert time.monotonic() - started >= 0.28  # the recorded `sleep 0.3`, really waited
    assert max(pauses) >= 0.28 and sum(pauses) >= 0.28
    pauses.clear()
    assert _run(None, *args, "--max-idle", "0").returncode == 0
    assert pauses == []  # every pause capped at zero: nothing slept


def test_export_text_strips_escape_sequences(recorded: tuple[Path, bytes], tmp_path: Path) -> None:
    root, shown = recorded
    out = tmp_path / "s.txt"
    args = ("export", "s-42", "--recordings", str(root), "--format", "text", "-o", str(out))
    done = _run(None, *args)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert b"\x1b[1;32mgreen" in shown
    assert "\ngreen\n" in text
    assert "\x1b" not in text and "\r" not in text
    assert "tether$ sleep 0.3\n" in text


def test_an_exported_recording_is_private_like_the_recording(
    recorded: tuple[Path, bytes], tmp_path: Path
) -> None:
    """Recordings are 0600; ``export -o`` wrote its copy with the umask's 0644, readable by
    every local user."""
    root, _ = recorded
    old = os.umask(0o022)
    try:
        for fmt in ("cast", "text"):
            out = tmp_path / f"s.{fmt}"
            done = _run(
                None, "export", "s-42", "--recordings", str(root), "-f", fmt, "-o", str(out)
            )
            assert done.returncode == 0, done.stderr
            assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(old)


def test_export_cast_is_uncompressed_asciicast(recorded: tuple[Path, bytes]) -> None:
    root, shown = recorded
    done = _run(None, "export", "s-42", "--recordings", str(root))
    assert done.returncode == 0, done.stderr
    first = json.loads(done.stdout.splitlines()[0])
    assert first["version"] == 2 and first["width"] == 80
    cast = parse_cast(done.stdout)
    assert cast.complete
    assert "".join(e.data for e in cast.events if e.code == "o").encode() == shown


def test_list_and_show(recorded: tuple[Path, bytes]) -> None:
    root, _ = recorded
    env = {"TETHER_DATA_DIR": str(root.parent)}  # the default: <data_dir>/recordings
    listed = _run(env, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["session_id"] == "s-42" and row["agent"] == "deploy-bot"
    assert row["state"] == "complete" and row["exit_status"] == 0
    assert row["started_at"] == T0.isoformat()
    assert _run(env, "list", "--json", "--agent", "other").stdout == b""

    table = _run(env, "list")
    assert b"s-42" in table.stdout and b"deploy-bot" in table.stdout

    shown = _run(env, "show", "s-42", "--json")
    info = json.loads(shown.stdout)
    assert info["target"] == "web-1" and info["user"] == "alice"
    assert info["transfers"][0]["path"] == "/etc/motd"
    assert info["readable_to_end"] is True
    assert b"transfer: download /etc/motd" in _run(env, "show", "s-42").stdout


def test_unknown_session_exits_5(recorded: tuple[Path, bytes]) -> None:
    root, _ = recorded
    for command in ("show", "replay", "export"):
        done = _run(None, command, "nope", "--recordings", str(root))
        assert done.returncode == 5
        assert done.stderr.startswith(b"tether: error: no recording of session nope")
    bad = _run(None, "show", "../x", "--recordings", str(root))
    assert bad.returncode == 5 and b"invalid session id" in bad.stderr


async def test_list_adds_the_sessions_of_the_audit_trail(recorded: tuple[Path, bytes]) -> None:
    root, _ = recorded
    data_dir = root.parent
    store = await Store.open(f"sqlite+aiosqlite:///{data_dir / 'tether.db'}")
    key = SigningKey.generate(time.time())
    log = AuditLog(store.engine, lambda: key)
    await log.start()
    try:
        for session, protocol in (("s-42", "ssh"), ("sql-7", "postgres")):
            fields = {"agent": "deploy-bot", "target": "db-1", "session_id": session}
            await log.append(AuditEvent(kind="session.start", action={"protocol": protocol},
                                        time=T0 + timedelta(minutes=1), **fields))  # fmt: skip
        await log.append(AuditEvent(kind="session.end", action={"protocol": "postgres"},
                                    duration_ms=2500.0, agent="deploy-bot", session_id="sql-7",
                                    time=T0 + timedelta(minutes=2)))  # fmt: skip
    finally:
        await log.close()
        await store.close()
    listed = await asyncio.to_thread(_run, {"TETHER_DATA_DIR": str(data_dir)}, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["session_id"], r["state"]) for r in rows] == [
        ("s-42", "complete"),  # recorded: listed once, from its recording
        ("sql-7", "no recording"),
    ]
    assert rows[1]["protocol"] == "postgres" and rows[1]["duration"] == 2.5


def _max_rss_kib(tether_bin: Path, env: dict[str, str], *args: str) -> int:
    """Run ``tether sessions ARGS`` under GNU time's peak RSS (KiB) via wait4."""
    process = subprocess.Popen([str(tether_bin), "sessions", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, process.stderr.read() if process.stderr else b""
    return int(usage.ru_maxrss)


def test_a_large_recording_is_exported_and_shown_in_constant_memory(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    """A recording without an output cap can be gigabytes: show and export read it as it
    goes. 48 MiB of output must not cost the command more memory than a small recording
    does, give or take 24 MiB (read whole, as before, it cost several times its size)."""
    root = tmp_path / "recordings"
    sizes = {"small": 1, "large": 48 * 1024}  # KiB of output
    line = b"\x1b[32mok\x1b[0m " + b"x" * 1000 + b"\r\n"
    for name, kib in sizes.items():
        recorder = Recorder.start(name, RecordingMeta(), root=root, now=T0)
        for _ in range(kib * 1024 // len(line) + 1):
            recorder.output(line)
        recorder.close(exit_status=0)
    rss: dict[tuple[str, str], int] = {}
    for name in sizes:
        out = tmp_path / f"{name}.txt"
        for command in (("show", name), ("export", name, "-f", "text", "-o", str(out))):
            rss[(name, command[0])] = _max_rss_kib(tether_bin, clean_env, *command,
                                                   "--recordings", str(root))  # fmt: skip
    exported = (tmp_path / "large.txt").stat().st_size
    assert exported > 47 * 1024 * 1024 and b"\x1b" not in (tmp_path / "large.txt").read_bytes()
    for command in ("show", "export"):
        assert rss[("large", command)] - rss[("small", command)] < 24 * 1024, rss
