"""Probes of a review of session recordings, driving the installed ``tether sessions`` CLI
on real recordings: each failed before its fix (a recorded SSH session also listed as "no
recording", removed transfer records unnoticed, a prune deleting a session still open, an
edited recording buried under 10,000 newer events shown as fine, internal errors)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tether.audit.events import AuditEvent
from tether.audit.log import AuditLog
from tether.audit.recordings import Recorder, RecordingError, RecordingMeta
from tether.identity.keys import SigningKey
from tether.store import Store

TETHER = str(Path(sys.executable).parent / "tether")
SID = "ssh-0123456789abcdef"  # the broker's session id (new_session_id)
REC = f"{SID}.1"  # the broker's recording id: <session>.<channel> (next_channel_id)
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def tether(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(data_dir), "TETHER_DATA_DIR": str(data_dir)}
    return subprocess.run([TETHER, "sessions", *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


async def audit(data_dir: Path, events: list[AuditEvent]) -> None:
    store = await Store.open(f"sqlite+aiosqlite:///{data_dir / 'tether.db'}")
    key = SigningKey.generate(time.time())
    log = AuditLog(store.engine, lambda: key, sqlite_synchronous="normal")
    await log.start()
    try:
        for start in range(0, len(events), 500):
            await asyncio.gather(*(log.append(e) for e in events[start : start + 500]))
    finally:
        await log.close()
        await store.close()


def record(root: Path, rec_id: str, text: bytes, transfers: int = 0) -> tuple[Path, str, list]:
    recorder = Recorder.start(rec_id, RecordingMeta(agent="deploy-bot", target="web-1"),
                              root=root, now=T0)  # fmt: skip
    recorder.output(text)
    moved = []
    for i in range(transfers):
        sha = hashlib.sha256(f"file {i}".encode()).hexdigest()
        recorder.transfer(f"/tmp/f{i}", "upload", 10 + i, sha)
        moved.append((f"/tmp/f{i}", 10 + i, sha))
    summary = recorder.close(0)
    return recorder.cast_path, summary.cast_sha256, moved


def ssh_command(rec_id: str, sha: str | None) -> AuditEvent:
    detail = {} if sha is None else {"recording": {"id": rec_id, "sha256": sha}}
    return AuditEvent(kind="ssh.command", agent="deploy-bot", target="web-1", session_id=SID,
                      action={"command": "echo hi"}, detail=detail, time=T0)  # fmt: skip


# --- 1. an SSH session is listed twice, once as "no recording"; show SESSION finds nothing ---


async def test_an_ssh_session_with_a_recording_is_not_listed_as_no_recording(
    tmp_path: Path,
) -> None:
    root = tmp_path / "recordings"
    _, sha, _ = record(root, REC, b"hello\n")
    await audit(tmp_path, [
        AuditEvent(kind="session.start", action={"protocol": "ssh"}, agent="deploy-bot",
                   target="web-1", session_id=SID, time=T0),
        ssh_command(REC, sha),
        AuditEvent(kind="session.end", action={"protocol": "ssh"}, agent="deploy-bot",
                   session_id=SID, duration_ms=1000.0, time=T0 + timedelta(seconds=1)),
    ])  # fmt: skip
    listed = await asyncio.to_thread(tether, tmp_path, "list", "--json")
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    states = {r["session_id"]: r["state"] for r in rows}
    assert states.get(REC) == "complete"
    # The audited session SID has a recording (REC); it must not be reported as recordless.
    assert states.get(SID) != "no recording", states


# --- 2. transfer records removed from transfers.jsonl: still "verified" ---------------------


@pytest.mark.parametrize("cut", ["one record", "whole file"])
async def test_a_removed_transfer_record_is_detected(tmp_path: Path, cut: str) -> None:
    root = tmp_path / "recordings"
    cast, _sha, moved = record(root, REC, b"", transfers=2)
    events = [AuditEvent(kind="file.transfer", agent="deploy-bot", target="web-1",
                         session_id=SID, action={"op": "write", "path": p, "size": s,
                                                 "sha256": d}, time=T0)
              for p, s, d in moved]  # fmt: skip
    await audit(tmp_path, events)
    records = cast.with_name(f"{REC}.transfers.jsonl")
    before = await asyncio.to_thread(tether, tmp_path, "show", REC, "--json")
    assert json.loads(before.stdout)["transfers_integrity"] == "verified"
    if cut == "one record":  # hide the upload of /tmp/f1
        records.write_text(records.read_text().splitlines()[0] + "\n")
    else:
        records.unlink()
    after = await asyncio.to_thread(tether, tmp_path, "show", REC, "--json")
    info = json.loads(after.stdout)
    assert (after.returncode, info["transfers_integrity"]) == (1, "modified"), info


# --- 3. prune removes the day of a session still open (idle for a day) ----------------------


def test_prune_keeps_the_day_of_an_open_session(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    started = datetime.now(UTC) - timedelta(days=3)
    recorder = Recorder.start(REC, RecordingMeta(), root=root, now=started)
    recorder.output(b"rm -rf /srv/data\n")  # what the agent did, then it waits silently
    cast = recorder.cast_path
    idle = time.time() - 2 * 86400  # last write two days ago: the shell is still open
    os.utime(cast, (idle, idle))
    done = subprocess.run([TETHER, "sessions", "prune", "--before", "1d", "--recordings",
                           str(root)], capture_output=True, text=True, timeout=120)  # fmt: skip
    try:
        assert cast.exists(), f"the open session's recording was deleted: {done.stdout}"
    finally:
        with pytest.raises(RecordingError) if not cast.exists() else _nothing():
            recorder.close(0)  # the broker's close then fails: the recording is lost


class _nothing:
    def __enter__(self) -> None: ...
    def __exit__(self, *a: object) -> None: ...


# --- 4. MAX_SESSIONS: the digest of an early channel is not looked up ----------------------


async def test_an_edited_recording_of_a_session_with_many_channels_is_modified(
    tmp_path: Path,
) -> None:
    root = tmp_path / "recordings"
    cast, sha, _ = record(root, REC, b"secret-42\n")
    # The agent then opened 10,000 more channels (each exec is one ssh.command event).
    more = [ssh_command(f"{SID}.{n}", "0" * 64) for n in range(2, 10_002)]
    await audit(tmp_path, [ssh_command(REC, sha), *more])
    text = gzip.decompress(cast.read_bytes()).replace(b"secret-42", b"nothing  ")
    cast.write_bytes(gzip.compress(text))
    summary_path = cast.with_name(f"{REC}.json")
    summary = json.loads(summary_path.read_text())
    summary["cast_sha256"] = hashlib.sha256(cast.read_bytes()).hexdigest()
    summary_path.write_text(json.dumps(summary))
    shown = await asyncio.to_thread(tether, tmp_path, "show", REC, "--json")
    info = json.loads(shown.stdout)
    assert (shown.returncode, info["integrity"]) == (1, "modified"), info["integrity"]


# --- 5. tracebacks instead of a clear error -------------------------------------------------


def test_show_with_an_unreadable_transfers_file_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    cast, _, _ = record(root, REC, b"x\n")
    cast.with_name(f"{REC}.transfers.jsonl").mkdir()  # or unreadable (EACCES) for a non-root
    shown = tether(tmp_path, "show", REC, "--recordings", str(root))
    assert "internal error" not in shown.stderr and shown.returncode != 70, shown.stderr[-400:]


def test_list_skips_a_recording_with_an_absurd_timestamp(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    record(root, REC, b"x\n")
    bad = root / "2026" / "03" / "10" / "other.cast.gz"
    header = {"version": 2, "width": 80, "height": 24, "timestamp": 10**20}
    bad.write_bytes(gzip.compress((json.dumps(header) + "\n").encode()))
    listed = tether(tmp_path, "list", "--recordings", str(root), "--json")
    assert "internal error" not in listed.stderr, listed.stderr[-400:]
    assert REC in listed.stdout
