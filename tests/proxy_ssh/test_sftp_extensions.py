"""The broker's SFTP server offers only the extensions it carries out under policy.

asyncssh's SFTP server advertises ``ranges@asyncssh.com`` (answered from a local file
object, which a broker handle is not), ``hardlink@openssh.com`` (refused by the broker
anyway) and ``vendor-id`` (asyncssh's version). An asyncssh client, seeing ``ranges``,
asked for a file's data ranges before every download, so ``sftp.get`` through the broker
failed. The OpenSSH ``sftp`` client (``-vv`` prints what the server advertised) and an
asyncssh client check what is offered now and that downloads, remote copies (``copy-data``,
decided as a read and a write) and the other extensions work and are decided.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import run

OFFERED = {
    "posix-rename@openssh.com", "statvfs@openssh.com", "fstatvfs@openssh.com",
    "fsync@openssh.com", "lsetstat@openssh.com", "limits@openssh.com", "copy-data",
}  # fmt: skip
NOT_OFFERED = {"ranges@asyncssh.com", "hardlink@openssh.com", "vendor-id"}


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A directory the files rule covers (``/tmp/**``), removed afterwards."""
    directory = Path("/tmp") / f"tether-sftp-ext-{os.getpid()}-{tmp_path.name}"
    directory.mkdir()
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def test_openssh_sftp_sees_only_what_the_broker_carries_out(env: Env) -> None:
    agent = await env.stack.agent()
    argv = ["sftp", "-vv", "-P", str(env.stack.broker.port), *agent.ssh_args(), "-b", "-"]
    status, _, err = await run([*argv, "root@web-1@127.0.0.1"], b"pwd\n")
    assert status == 0, err
    advertised = set(re.findall(rb'Server supports extension "([^"]+)"', err))
    names = {name.decode() for name in advertised}
    assert names >= OFFERED, err
    assert not names & NOT_OFFERED, names


async def test_asyncssh_client_downloads_and_copies_through_the_broker(
    env: Env, tmp_path: Path, work: Path
) -> None:
    agent = await env.stack.agent()
    data = os.urandom(70_000)
    (work / "a.bin").write_bytes(data)
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        assert sftp.supports_remote_copy
        await sftp.get(f"{work}/a.bin", str(tmp_path / "back.bin"))  # asked for ranges before
        async with sftp.open(f"{work}/a.bin", "rb") as remote:
            assert [r async for r in remote.request_ranges(0, 70_000)] == [(0, 70_000)]
        await sftp.remote_copy(f"{work}/a.bin", f"{work}/c.bin")  # copy-data
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.remote_copy(f"{work}/a.bin", "/etc/tether-copied")
        with pytest.raises(asyncssh.SFTPError):
            await sftp.link(f"{work}/a.bin", f"{work}/hard")
        assert (await sftp.statvfs(str(work))).bsize > 0
        await sftp.posix_rename(f"{work}/c.bin", f"{work}/d.bin")
        handler = sftp._handler  # a client that asks anyway is refused by the broker
        handler._supports_ranges = handler._supports_hardlink = True
        async with sftp.open(f"{work}/a.bin", "rb") as remote:
            with pytest.raises(asyncssh.SFTPOpUnsupported):
                await handler.request_ranges(remote.handle, 0, 10)
        with pytest.raises(asyncssh.SFTPOpUnsupported):
            await sftp.link(f"{work}/a.bin", f"{work}/hard")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert (work / "d.bin").read_bytes() == data
    assert not (work / "hard").exists() and not Path("/etc/tether-copied").exists()
    moved = [json.loads(str(e["action"])) for e in await env.stack.events("file.transfer")]
    written = [m for m in moved if m["op"] == "write"]
    assert [(m["path"], m["size"]) for m in written] == [(f"{work}/c.bin", 70_000)]
    denied = [
        json.loads(str(e["action"]))["files"]
        for e in await env.stack.events("decision")
        if e["decision"] == "deny"
    ]
    assert {"op": "write", "path": "/etc/tether-copied"} in denied
