"""Review probes of the SSH/SFTP broker, driven with real clients on the wire.

Each test pins a behaviour a review found wrong or had no test for: a ``pty-req`` sent after
the exec was decided, SFTP open flags that make the target open a file for reading, and
``lsetstat``, which the broker sent on as ``setstat``; and, without a fix needed, ``env``
requests and a second ``exec``/``shell`` request on one channel.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import asyncssh
import pytest
from asyncssh import FXF_APPEND, FXF_CREAT, FXF_WRITE
from asyncssh.packet import String, UInt32

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import policy, received

DROP_BOX = """
rules:
  - id: drop-box
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    files:
      write: ["{dir}/**"]
"""


async def _wait_for_decisions(env: Env, count: int) -> None:
    for _ in range(500):
        if len(await env.stack.events("decision")) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no decision was audited")


async def test_a_pty_asked_for_after_the_exec_decision_is_not_given(env: Env) -> None:
    """An exec with a terminal needs ``ssh.shell`` (test_channels). asyncssh's server takes a
    ``pty-req`` after ``exec`` too; one that comes while the broker dials the target (held
    here, so the timing is certain) gave the allowed command a terminal on the target that
    the shell rule never allowed."""
    agent = await env.stack.agent()  # deploy-bot: "sh -c *" is allowed, a shell is not
    context = env.stack.broker.context
    context.dials = asyncio.Semaphore(0)  # the dial waits until the pty-req is in
    output = bytearray()

    class Client(asyncssh.SSHClientSession[bytes]):
        def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
            output.extend(data)

    pty = (String("xterm"), UInt32(80), UInt32(24), UInt32(0), UInt32(0), String(b"\0"))
    async with agent.connect("root@web-1") as conn:
        chan, _ = await conn.create_session(Client, "sh -c tty", encoding=None)
        await _wait_for_decisions(env, 1)
        await asyncio.sleep(0.1)  # past the decision: the broker waits for the dial
        await chan._make_request(b"pty-req", *pty)
        context.dials.release()
        await chan.wait_closed()
    assert received(env.sshd_dir) == ["sh -c tty"]
    assert b"/dev/pts/" not in output and b"not a tty" in output, bytes(output)
    decisions = [json.loads(e["action"])["ssh"] for e in await env.stack.events("decision")]
    assert decisions == [{"command": "sh -c tty"}]


@pytest.mark.parametrize("pflags", [FXF_APPEND, FXF_CREAT, FXF_APPEND | FXF_CREAT])
async def test_open_flags_without_write_are_decided_as_read(
    env: Env, tmp_path: Path, pflags: int
) -> None:
    """Without FXF_WRITE, OpenSSH's sftp-server opens the file O_RDONLY (with O_APPEND or
    O_CREAT): the handle reads. Decided as ``write`` alone, a write-only drop box let an
    agent read every file in it."""
    box = tmp_path / "box"
    box.mkdir()
    (box / "theirs").write_bytes(b"someone else's upload")
    env.stack.holder.replace(policy(DROP_BOX.replace("{dir}", str(box))).current)
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        handler = sftp._handler
        path = str(box / "theirs").encode()
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            handle = await handler.open(path, pflags, asyncssh.SFTPAttrs())
            data = await handler.read(handle, 0, 100)
            raise AssertionError(f"read {data!r} with only a write grant")
        # An upload to the drop box (FXF_WRITE) still works.
        async with sftp.open(str(box / "mine"), "ab") as file:
            await file.write(b"mine")
    assert (box / "mine").read_bytes() == b"mine"
    reads = [
        e for e in await env.stack.events("decision")
        if json.loads(e["action"])["files"]["op"] == "read"
    ]  # fmt: skip
    assert [e["decision"] for e in reads] == ["deny"]
    moved = [json.loads(str(e["action"])) for e in await env.stack.events("file.transfer")]
    assert [m["op"] for m in moved] == ["write"]


async def test_a_handle_is_used_only_as_it_was_decided(env: Env, tmp_path: Path) -> None:
    """A write on a handle decided for reading (or a read on one decided for writing) is
    refused by the broker, not acknowledged and left to the target to fail later."""
    (tmp_path / "f").write_bytes(b"original")
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        handler = sftp._handler
        path = str(tmp_path / "f").encode()
        reading = await handler.open(path, asyncssh.FXF_READ, asyncssh.SFTPAttrs())
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="not opened for writing"):
            await handler.write(reading, 0, b"changed")
        await handler.close(reading)
        writing = await handler.open(path, FXF_WRITE, asyncssh.SFTPAttrs())
        with pytest.raises(asyncssh.SFTPPermissionDenied, match="not opened for reading"):
            await handler.read(writing, 0, 100)
        await handler.close(writing)
    assert (tmp_path / "f").read_bytes() == b"original"


async def test_lsetstat_does_not_follow_a_link(env: Env, tmp_path: Path) -> None:
    """``lsetstat@openssh.com`` (``setstat`` with follow_symlinks=False) was sent on as
    ``setstat``: the target changed the file the link points to, not the link."""
    (tmp_path / "file").write_bytes(b"x")
    os.utime(tmp_path / "file", (1_000_000_000, 1_000_000_000))
    (tmp_path / "link").symlink_to(tmp_path / "file")
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        attrs = asyncssh.SFTPAttrs(atime=1_500_000_000, mtime=1_500_000_000)
        await sftp.setstat(str(tmp_path / "link"), attrs, follow_symlinks=False)
    assert (tmp_path / "file").stat().st_mtime == 1_000_000_000
    assert (tmp_path / "link").lstat().st_mtime == 1_500_000_000


async def test_env_requests_and_a_second_request_on_a_channel(env: Env) -> None:
    """``env`` requests (LD_PRELOAD, BASH_ENV, PATH) never reach the target; a second
    ``exec`` or a ``shell`` on a channel that runs a command is refused and reaches nothing."""
    agent = await env.stack.agent()
    names = ("LD_PRELOAD", "BASH_ENV", "PATH", "TETHER_PROBE")
    command = "sh -c 'echo " + " ".join(f"${{{n}-unset}}" for n in names) + "'"
    async with agent.connect("root@web-1") as conn:
        sent = dict.fromkeys(names, "/tmp/evil")
        result = await conn.run(command, env=sent)
        assert result.exit_status == 0, result.stderr
        assert "/tmp/evil" not in str(result.stdout)
        assert str(result.stdout).split()[-1] == "unset"  # TETHER_PROBE
        chan, _ = await conn.create_session(asyncssh.SSHClientSession, "sleep 1")
        assert await chan._make_request(b"exec", String("cat /etc/shadow")) is False
        assert await chan._make_request(b"shell") is False
        await chan.wait_closed()
    assert received(env.sshd_dir) == [command, "sleep 1"]


FORWARD_DENY = """
rules:
  - id: forward-anywhere
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh:
      forwards: ["*:*"]
  - id: never-the-loopback
    effect: deny
    targets: {labels: {env: test}}
    ssh:
      forwards: ["127.0.0.1:*", "localhost:*"]
"""


@pytest.mark.parametrize(
    "host", ["127.1", "2130706433", "0x7f000001", "LOCALHOST", "::ffff:127.0.0.1"]
)
async def test_a_denied_forward_destination_is_not_reached_by_another_spelling(
    env: Env, host: str
) -> None:
    """The destination was matched as the agent spelled it, and the target's resolver reads
    other spellings of the same address, so a deny rule on ``127.0.0.1:*`` /
    ``localhost:*`` was passed by ``127.1``, ``2130706433``, ``0x7f000001``, ``LOCALHOST``
    or ``::ffff:127.0.0.1``. Only the canonical spelling is accepted now."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"reached")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env.stack.holder.replace(policy(FORWARD_DENY).current)
    agent = await env.stack.agent()
    try:
        async with agent.connect("root@web-1") as conn:
            reader, _ = await conn.open_connection(host, port)
            got = await asyncio.wait_for(reader.read(), 10)
    finally:
        server.close()
    assert got == b"", f"{host}:{port} reached the denied loopback listener"
