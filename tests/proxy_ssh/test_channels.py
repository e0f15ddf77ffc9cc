"""Shells (recorded), port forwarding, refused forwarding kinds, many concurrent sessions."""

from __future__ import annotations

import asyncio
import errno
import gzip
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from typer.testing import CliRunner

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import received
from tether.audit import recordings
from tether.cli.main import app


async def test_shell_is_refused_without_a_rule(env: Env) -> None:
    agent = await env.stack.agent()
    status, _, err = await agent.ssh("root@web-1", None, args=["-tt"])
    assert status == 1 and b"Tether: denied: default-deny" in err
    assert received(env.sshd_dir) == []


async def test_exec_with_a_terminal_needs_the_shell_rule(env: Env) -> None:
    agent = await env.stack.agent()
    status, _, err = await agent.ssh("root@web-1", "echo hi", args=["-tt"])
    assert status == 1 and b"Tether: denied: default-deny" in err
    assert received(env.sshd_dir) == []
    decisions = [json.loads(e["action"])["ssh"] for e in await env.stack.events("decision")]
    assert decisions == [{"command": "echo hi"}, {"shell": True}]


async def test_allowed_shell_is_recorded_as_asciicast(env: Env) -> None:
    agent = await env.stack.agent("shell-bot")
    async with agent.connect("root@web-1") as conn:
        process = await conn.create_process(term_type="xterm", term_size=(100, 30))
        process.stdin.write("echo recorded-$((40+2))\n")
        process.stdin.write("exit 7\n")
        await process.wait_closed()
        assert process.exit_status == 7
    assert received(env.sshd_dir) == ["<shell>"]
    await env.stack.broker.stop()
    casts = list((env.stack.broker.data_dir / "recordings").rglob("*.cast.gz"))
    assert len(casts) == 1
    lines = gzip.decompress(casts[0].read_bytes()).decode().splitlines()
    header = json.loads(lines[0])
    assert (header["version"], header["width"], header["height"]) == (2, 100, 30)
    assert header["tether"]["agent"] == "shell-bot" and header["env"] == {"TERM": "xterm"}
    output = "".join(json.loads(line)[2] for line in lines[1:] if json.loads(line)[1] == "o")
    assert "recorded-42" in output
    assert all(json.loads(line)[1] != "i" for line in lines[1:])  # keystrokes: off by default
    summary = json.loads(casts[0].with_name(casts[0].name.replace(".cast.gz", ".json")).read_text())
    assert summary["exit_status"] == 7


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_allowed_forward_relays_and_is_recorded(env: Env) -> None:
    server, port = await _echo_server()
    agent = await env.stack.agent()
    try:
        async with agent.connect("root@web-1") as conn:
            reader, writer = await conn.open_connection("127.0.0.1", port)
            writer.write(b"ping" * 1000)
            writer.write_eof()
            assert await reader.read() == b"ping" * 1000
            writer.close()
            refused_reader, _ = await conn.open_connection("localhost", port)
            assert await refused_reader.read() == b""
    finally:
        server.close()
    await env.stack.broker.stop()
    ends = [e for e in await env.stack.events("session.end")
            if json.loads(e["action"])["protocol"] == "ssh-forward"]  # fmt: skip
    assert [(e["bytes_in"], e["bytes_out"]) for e in ends] == [(4000, 4000)]
    assert json.loads(ends[0]["detail"])["forward"] == f"127.0.0.1:{port}"
    denied = [e for e in await env.stack.events("decision") if e["decision"] == "deny"]
    assert {json.loads(e["action"])["ssh"]["forward"] for e in denied} == {f"localhost:{port}"}


async def test_agent_x11_and_remote_forwarding_are_refused(env: Env) -> None:
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn:
        try:
            await conn.start_server(lambda: None, "127.0.0.1", 0)  # type: ignore[arg-type]
        except asyncssh.ChannelListenError:
            pass
        else:
            raise AssertionError("remote forwarding was accepted")
    status, out, _ = await agent.ssh("root@web-1", "echo ok", args=["-A", "-X"])
    assert (status, out) == (0, b"ok\n")
    # sshd sets SSH_AUTH_SOCK on the target when agent forwarding is on; it must be absent.
    command = "sh -c 'echo ${SSH_AUTH_SOCK-none} ${DISPLAY-none}'"
    status, out, _ = await agent.ssh("root@web-1", command, args=["-A", "-X"])
    assert (status, out) == (0, b"none none\n")


async def test_fifty_concurrent_sessions(env: Env) -> None:
    agents = [await env.stack.agent() for _ in range(3)]
    results = await asyncio.gather(
        *(agents[i % 3].ssh("root@web-1", f"echo session-{i}") for i in range(60))
    )
    assert [r[1] for r in results] == [f"session-{i}\n".encode() for i in range(60)]
    assert all(r[0] == 0 for r in results)
    assert sorted(received(env.sshd_dir)) == sorted(f"echo session-{i}" for i in range(60))


async def test_broker_host_key_is_private_and_stable(env: Env) -> None:
    path = Path(env.stack.broker.data_dir) / env.stack.broker.config.host_key
    assert path.stat().st_mode & 0o777 == 0o600
    first = path.read_bytes()
    await env.stack.broker.stop()
    await env.stack.broker.start()
    assert path.read_bytes() == first


def shows(env: Env, recording_id: str) -> Callable[[], tuple[int, dict[str, Any]]]:
    """``tether sessions show RECORDING --json`` on the stack's node: (exit code, JSON)."""
    config = env.stack.directory / "tether.yaml"
    config.write_text(
        f"data_dir: {env.stack.broker.data_dir}\n"
        f"database_url: sqlite+aiosqlite:///{env.stack.directory / 'tether.db'}\n"
    )

    def show() -> tuple[int, dict[str, Any]]:
        done = CliRunner().invoke(
            app, ["sessions", "show", recording_id, "-c", str(config), "--json"]
        )
        return done.exit_code, json.loads(done.stdout)

    return show


async def test_a_recording_is_bound_to_the_audit_trail_and_a_change_is_detected(
    env: Env,
) -> None:
    """Nothing tied a recording to the audit trail: an edited cast (output removed or
    rewritten, re-compressed, its summary edited to match) read as genuine. The
    ``ssh.command`` event now holds the cast file's SHA-256 (in the hash chain), and
    ``tether sessions show`` compares: verified, or modified with exit status 1."""
    agent = await env.stack.agent("shell-bot")
    async with agent.connect("root@web-1") as conn:
        process = await conn.create_process(term_type="xterm", term_size=(80, 24))
        process.stdin.write("echo secret-$((40+2))\n")
        process.stdin.write("exit 0\n")
        await process.wait_closed()
    await env.stack.broker.stop()
    [cast] = list((env.stack.broker.data_dir / "recordings").rglob("*.cast.gz"))
    recording_id = cast.name.removesuffix(".cast.gz")
    [event] = await env.stack.events("ssh.command")
    detail = json.loads(event["detail"])
    assert detail["recording"] == {
        "id": recording_id,
        "sha256": hashlib.sha256(cast.read_bytes()).hexdigest(),
    }
    show = shows(env, recording_id)

    code, info = await asyncio.to_thread(show)
    assert (code, info["integrity"]) == (0, "verified"), info

    # Rewrite what the agent was shown, and the summary's digest to match the new file.
    text = gzip.decompress(cast.read_bytes()).replace(b"secret-42", b"nothing")
    cast.write_bytes(gzip.compress(text))
    summary_path = cast.with_name(f"{recording_id}.json")
    summary = json.loads(summary_path.read_text())
    summary["cast_sha256"] = hashlib.sha256(cast.read_bytes()).hexdigest()
    summary_path.write_text(json.dumps(summary))
    code, info = await asyncio.to_thread(show)
    assert (code, info["integrity"]) == (1, "modified"), info
    assert info["audited_sha256"] == detail["recording"]["sha256"] != info["cast_sha256"]


def _disk_full_after(monkeypatch: pytest.MonkeyPatch, allowed: int) -> None:
    """Recordings get ``allowed`` bytes, then every write fails as on a full disk."""
    original = recordings._HashingFile.write

    def write(self: recordings._HashingFile, data: bytes) -> int:
        if self.size + len(data) > allowed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, data)

    monkeypatch.setattr(recordings._HashingFile, "write", write)


async def test_a_recording_that_cannot_be_written_ends_the_session_audited(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk under the recordings: the output that could not be recorded goes no
    further, the channel ends, and the command's event says why (before, the error escaped
    as an internal error and the command left no ``ssh.command`` event)."""
    _disk_full_after(monkeypatch, 600)  # the header fits, a screenful of output does not
    agent = await env.stack.agent()
    status, out, err = await agent.ssh("root@web-1", "sh -c 'seq 1 50000; echo done'")
    assert status == 1 and b"Tether: the session recording failed" in err
    assert b"done" not in out and len(out) < 4096
    await env.stack.broker.stop()
    [command] = await env.stack.events("ssh.command")
    detail = json.loads(command["detail"])
    assert "could not be written: No space left on device" in detail["error"]
    assert "recording" not in detail
    assert json.loads(command["action"])["exit_status"] is None
    [summary_less] = list((env.stack.broker.data_dir / "recordings").rglob("*.cast.gz"))
    assert not summary_less.with_name(summary_less.name.replace(".cast.gz", ".json")).exists()


async def test_a_recording_that_cannot_be_finished_is_audited_too(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills as the cast is closed (its gzip trailer): the command ran to its end,
    but no complete recording exists, and the event says so instead of binding one."""
    agent = await env.stack.agent()
    original = recordings.Recorder.close

    def close(self: recordings.Recorder, exit_status: int | None = None) -> Any:
        _disk_full_after(monkeypatch, self._raw.size)
        return original(self, exit_status)

    monkeypatch.setattr(recordings.Recorder, "close", close)
    status, out, err = await agent.ssh("root@web-1", "echo finished")
    assert out == b"finished\n"
    assert status == 1 and b"Tether: the session recording failed" in err
    await env.stack.broker.stop()
    [command] = await env.stack.events("ssh.command")
    detail = json.loads(command["detail"])
    assert "could not be written" in detail["error"] and "recording" not in detail


async def test_sftp_transfers_are_checked_against_the_audit_trail(env: Env) -> None:
    """A recording's ``transfers.jsonl`` was shown as written: an edited record (another
    digest, a path that never moved) read as genuine. ``tether sessions show`` now checks
    each record against the session's ``file.transfer`` events (in the hash chain)."""
    agent = await env.stack.agent()
    local = env.sshd_dir / "payload.txt"
    local.write_bytes(b"payload for the record\n")
    remote = env.sshd_dir / "uploaded.txt"
    status, _, err = await agent.sftp(
        "root@web-1", f"put {local} {remote}\nget {remote} {local}.back\n"
    )
    assert status == 0, err
    await env.stack.broker.stop()
    [records] = list((env.stack.broker.data_dir / "recordings").rglob("*.transfers.jsonl"))
    recording_id = records.name.removesuffix(".transfers.jsonl")
    show = shows(env, recording_id)

    code, info = await asyncio.to_thread(show)
    assert [t["direction"] for t in info["transfers"]] == ["upload", "download"]
    assert (code, info["transfers_integrity"]) == (0, "verified"), info

    lines = records.read_text().splitlines()
    forged = json.loads(lines[0])
    forged["sha256"] = hashlib.sha256(b"something else").hexdigest()
    records.write_text("\n".join([json.dumps(forged), *lines[1:]]) + "\n")
    code, info = await asyncio.to_thread(show)
    assert (code, info["transfers_integrity"]) == (1, "modified"), info
