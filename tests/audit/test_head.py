"""The head file: each checkpoint also recorded outside the database, and checked by verify.

It closes the gap the checkpoints alone leave: deleting the last checkpoints together with
every event after the new last one leaves a shorter trail that verifies. With the head
file, verification finds the cut, offline (``tether audit verify --data-dir``) and through
the API; a forged or malformed head file is a finding too; the file never moves backwards.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.audit.conftest import Trail, open_trail
from tether.audit import log as audit_log
from tether.audit.head import default_head_file, read_head, write_head
from tether.audit.store import Checkpoint


@pytest.fixture
async def written(store_url: str, tmp_path: Path) -> AsyncIterator[Trail]:
    """25 events, checkpoints at 10 and 20, then closed (a last checkpoint at 25); the
    head file in ``tmp_path`` on both backends (PostgreSQL has no default one)."""
    trail = await open_trail(store_url, head_file=tmp_path / "node.audit-head")
    try:
        await trail.append(25)
        await trail.log.close()
        yield trail
    finally:
        await trail.log.close()
        await trail.store.close()


def head_path(trail: Trail) -> Path:
    assert trail.log.head_file is not None
    return trail.log.head_file


async def findings(trail: Trail, head_file: Path | None = None) -> list[tuple[int, str]]:
    report = await trail.verify(head_file or head_path(trail))
    return [(f.seq, f.problem) for f in report.findings]


async def cut_after(trail: Trail, seq: int) -> None:
    """Delete every checkpoint and event after ``seq``, as a database administrator could."""
    await trail.tamper(
        f"DELETE FROM audit_checkpoints WHERE seq > {seq}",
        f"DELETE FROM audit_events WHERE seq > {seq}",
    )


async def test_every_checkpoint_is_recorded_in_the_head_file(written: Trail) -> None:
    head = read_head(head_path(written))
    assert head is not None and head.seq == 25
    report = await written.verify(head_path(written))
    assert report.ok and report.head_seq == 25
    assert report.head_file == str(head_path(written))


async def test_a_cut_that_checkpoints_alone_miss_is_found(written: Trail) -> None:
    await cut_after(written, 10)
    # Without the head file, the shorter trail verifies: the limit the head file closes.
    assert (await written.verify()).ok
    assert await findings(written) == [(25, "truncated")]
    report = await written.verify(head_path(written))
    assert "events 11 to 25" in report.findings[0].what


async def test_deleting_only_the_last_checkpoint_is_found(written: Trail) -> None:
    await written.tamper("DELETE FROM audit_checkpoints WHERE seq = 25")
    assert (await written.verify()).ok
    assert await findings(written) == [(25, "head")]


async def test_a_forged_head_file_is_refused(written: Trail) -> None:
    path = head_path(written)
    document = json.loads(path.read_text())
    document["seq"] = 40  # claims more events than were ever written
    path.write_text(json.dumps(document))
    assert await findings(written) == [(40, "signature"), (40, "truncated")]
    path.write_text("{not json")
    assert await findings(written) == [(0, "head")]


async def test_the_head_file_never_moves_backwards(tmp_path: Path) -> None:
    path = tmp_path / "h.audit-head"
    later = Checkpoint(9, "b" * 64, datetime.now(UTC), "kid", "sig")
    assert write_head(path, later)
    earlier = Checkpoint(5, "a" * 64, datetime.now(UTC), "kid", "sig")
    assert not write_head(path, earlier)
    assert read_head(path) == later
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_sqlite_databases_have_a_default_head_file(tmp_path: Path) -> None:
    url = make_url(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    assert default_head_file(url) == tmp_path / "tether.db.audit-head"
    assert default_head_file(make_url("postgresql+asyncpg://u@h/db")) is None
    assert default_head_file(make_url("sqlite+aiosqlite://")) is None


async def test_offline_verify_uses_the_databases_own_head_file(
    tmp_path: Path, tether_bin: Path, clean_env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    trail = await open_trail(f"sqlite+aiosqlite:///{data / 'tether.db'}")
    try:
        await trail.append(25)
        await trail.log.close()
        assert head_path(trail) == data / "tether.db.audit-head"
        await cut_after(trail, 10)
    finally:
        await trail.store.close()
    done = subprocess.run(
        [str(tether_bin), "audit", "verify", "--data-dir", str(data), "--json"],
        env=clean_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["head_seq"] == 25
    assert [(f["seq"], f["problem"]) for f in report["findings"]] == [(25, "truncated")]
    # A copy of the database without its head file verifies as what it is: no evidence.
    (data / "tether.db.audit-head").unlink()
    again = subprocess.run(
        [str(tether_bin), "audit", "verify", "--data-dir", str(data), "--json"],
        env=clean_env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert again.returncode == 0 and json.loads(again.stdout)["head_seq"] is None


async def test_appends_do_not_wait_for_the_head_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The head file is written after each checkpoint's commit, in the background: a slow
    disk there delays no append; close() waits for it, and it ends at the last checkpoint."""
    release, started = threading.Event(), threading.Event()

    def slow_write_head(path: Path, checkpoint: Checkpoint) -> bool:
        started.set()
        release.wait(10)
        return write_head(path, checkpoint)

    monkeypatch.setattr(audit_log, "write_head", slow_write_head)
    trail = await open_trail(
        f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}", head_file=tmp_path / "node.audit-head"
    )
    try:
        await trail.append(25)  # checkpoints at 10 and 20, their head file writes held
        assert started.is_set() and read_head(head_path(trail)) is None
        release.set()
        await trail.log.close()  # a last checkpoint at 25; waits for the head file
        head = read_head(head_path(trail))
        assert head is not None and head.seq == 25
        assert (await trail.verify(head_path(trail))).ok
    finally:
        release.set()
        await trail.log.close()
        await trail.store.close()
