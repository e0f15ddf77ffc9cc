"""Session 19 review of SFTP transfers through the broker, to a real OpenSSH target.

* A file opened for reading and writing (``r+``) and then only read was audited as a
  ``write`` (and recorded as an ``upload``): the bytes the agent downloaded never showed up
  as a read in the audit trail.
* A transfer whose close failed (the target did not accept the bytes) was audited with a
  SHA-256 but not recorded, so ``tether sessions show`` called an untouched recording
  ``modified``: every audited transfer that carries a digest must be in the recording.
* An SFTP channel that ended with a file still open whose writes had failed (the agent gone
  mid-upload) stopped its clean-up at that file and the error disconnected the agent's whole
  connection (every other channel with it); the channel's recording never got its summary,
  and the other open files were never closed nor audited. Files the agent left open are now
  audited with ``detail.left_open`` (the transfer may be partial).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from tests.proxy_ssh.conftest import Env
from tether.audit.log import AuditUnavailable


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A directory the files rule covers (``/tmp/**``), removed afterwards."""
    directory = Path("/tmp") / f"tether-sftp-s19-{os.getpid()}-{tmp_path.name}"
    directory.mkdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _transfers(env: Env) -> list[dict[str, Any]]:
    found = []
    for event in await env.stack.events("file.transfer"):
        action = json.loads(str(event["action"]))
        detail = json.loads(str(event["detail"])) if event.get("detail") else None
        found.append({**action, "detail": detail})
    return found


def _recorded(env: Env) -> list[dict[str, Any]]:
    root = Path(env.stack.broker.context.recordings)
    lines = []
    for path in sorted(root.rglob("*.transfers.jsonl")):
        lines += [json.loads(line) for line in path.read_text().splitlines() if line]
    return lines


async def _settled(check: Any) -> bool:
    for _ in range(300):
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_reading_through_a_read_write_handle_is_audited_as_a_read(
    env: Env, work: Path
) -> None:
    data = os.urandom(100_000)
    (work / "secret.bin").write_bytes(data)
    agent = await env.stack.agent()
    async with (
        agent.connect("root@web-1") as conn,
        conn.start_sftp_client() as sftp,
        sftp.open(f"{work}/secret.bin", "r+b") as remote,
    ):
        assert await remote.read() == data
    digest = hashlib.sha256(data).hexdigest()
    moved = [m for m in await _transfers(env) if m["path"] == f"{work}/secret.bin"]
    reads = [m for m in moved if m["op"] == "read"]
    assert [(m["size"], m["sha256"]) for m in reads] == [(100_000, digest)], moved
    assert all(m["size"] == 0 for m in moved if m["op"] == "write"), moved
    recorded = [r for r in _recorded(env) if r["path"] == f"{work}/secret.bin"]
    assert {(r["direction"], r["size"]) for r in recorded} >= {("download", 100_000)}
    assert ("upload", 100_000) not in {(r["direction"], r["size"]) for r in recorded}


async def test_a_failed_transfer_is_not_audited_with_a_digest_the_recording_lacks(
    env: Env, work: Path
) -> None:
    (work / "full").symlink_to("/dev/full")  # the target's writes fail: ENOSPC
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        with pytest.raises((asyncssh.SFTPError, OSError)):
            async with sftp.open(f"{work}/full", "wb") as remote:
                await remote.write(b"x" * 70_000)
        async with sftp.open(f"{work}/ok.bin", "wb") as remote:
            await remote.write(b"y" * 1000)
    moved = await _transfers(env)
    failed = [m for m in moved if m["path"] == f"{work}/full"]
    assert failed and all(m["detail"] and m["detail"].get("error") for m in failed), failed
    recorded = {(r["direction"], r["path"], r["size"], r["sha256"]) for r in _recorded(env)}
    directions = {"read": "download", "write": "upload"}
    for m in moved:
        if m["op"] in directions and m["sha256"] is not None:
            key = (directions[m["op"]], m["path"], m["size"], m["sha256"])
            assert key in recorded, (m, recorded)


async def test_a_channel_ending_on_a_failed_upload_is_cleaned_up(env: Env, work: Path) -> None:
    (work / "full").symlink_to("/dev/full")
    (work / "other.bin").write_bytes(b"z" * 5000)
    agent = await env.stack.agent()
    context = env.stack.broker.context
    async with agent.connect("root@web-1") as conn:
        sftp = await conn.start_sftp_client()
        other = await sftp.open(f"{work}/other.bin", "rb")
        assert await other.read(5000) == b"z" * 5000
        full = await sftp.open(f"{work}/full", "wb")
        await full.write(b"x" * 70_000)  # written behind: the failure is still to come
        await asyncio.sleep(0.3)
        sftp.exit()  # the channel ends with both files open; the connection stays
        await sftp.wait_closed()
        (session,) = context.sessions  # the agent's connection is still up
        assert await _settled(lambda: session.open_channels == 0), "channel never closed"
        assert (await conn.run("echo still-here", check=False)).stdout == "still-here\n"
    moved = await _transfers(env)
    full = [m for m in moved if m["path"] == f"{work}/full" and m["op"] == "write"]
    assert full and full[0]["sha256"] is None and full[0]["detail"]["left_open"], moved
    other = [m for m in moved if m["path"] == f"{work}/other.bin" and m["op"] == "read"]
    assert other and other[0]["size"] == 5000 and other[0]["detail"] == {"left_open": True}
    root = Path(context.recordings)
    summaries = [p for p in root.rglob("*.json") if not p.name.endswith(".jsonl")]
    assert summaries, "the SFTP channel's recording was never closed"


async def test_an_internal_failure_does_not_reach_the_agent_with_its_text(
    env: Env, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncssh answers an exception it does not know with ``Uncaught exception: <text>``:
    an audit trail that failed after an SFTP operation (here the removal's event) sent the
    writer's error, database address included, to the agent. An exec channel says
    ``internal error (<type>)``; the SFTP channel now says the same."""
    (work / "gone.txt").write_bytes(b"x")
    auditor = env.stack.broker.context.services.auditor
    assert auditor is not None

    async def down(*args: object, **kwargs: object) -> int:
        raise AuditUnavailable("audit trail unavailable: OSError: Connect call failed 10.9.8.7")

    monkeypatch.setattr(auditor, "file_transfer", down)
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        with pytest.raises(asyncssh.SFTPFailure) as failed:
            await sftp.remove(f"{work}/gone.txt")
        with pytest.raises(asyncssh.SFTPFailure) as closing:
            async with sftp.open(f"{work}/new.txt", "wb") as remote:
                await remote.write(b"y")
        assert (await sftp.stat(str(work))).size is not None  # the channel still works
    for error in (failed.value, closing.value):
        assert "10.9.8.7" not in str(error.reason), error.reason
        assert str(error.reason) == "Tether: internal error (AuditUnavailable)"


async def test_realpath_of_a_name_that_is_not_utf8_is_refused(env: Env) -> None:
    """It was an uncaught exception (``Uncaught exception: the path is not valid UTF-8``)."""
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        with pytest.raises(asyncssh.SFTPNoSuchFile) as refused:
            await sftp.realpath(b"/tmp/\xff")
        assert str(refused.value.reason) == "Tether: the path is not valid UTF-8"


async def test_a_read_is_capped_at_the_advertised_read_length(env: Env, work: Path) -> None:
    """A read request names any length up to 4 GiB; the broker fetched all of it from the
    target into memory (and as much again read ahead) before answering, so one request on
    a large readable file could exhaust the broker's memory for every session. It now
    answers at most the read length it advertises (``limits@openssh.com``: 4 MiB); SFTP
    allows a short read and clients ask for the rest."""
    (work / "zero").symlink_to("/dev/zero")  # as large as asked
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        limits = sftp.limits
        async with sftp.open(f"{work}/zero", "rb") as remote:
            data, _ = await sftp._handler.read(remote._handle, 0, 24 * 1024 * 1024)
    assert 0 < len(data) <= limits.max_read_len == 4 * 1024 * 1024
