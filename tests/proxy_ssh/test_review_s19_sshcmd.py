"""Review s19 (SSH commands), on the wire with the real OpenSSH client and target."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import received, run
from tether.audit.recordings_read import read_header
from tether.cli.common import configure_logging

SECRET = "s19-hunter2-value"


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def node_log() -> Iterator[_Keep]:
    """The log as ``tether serve`` configures it (``log_level: info``, the default)."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {name: logging.getLogger(name).level for name in ("asyncssh", "httpx", "httpcore")}
    keep = _Keep()
    configure_logging("info")
    root.addHandler(keep)
    try:
        yield keep
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, was in named.items():
            logging.getLogger(name).setLevel(was)


@pytest.mark.parametrize(
    "command",
    [
        f"echo --token={SECRET}",  # allowed: runs on the target
        f"curl -u admin:{SECRET} https://example.com",  # denied
    ],
)
async def test_the_command_text_is_not_written_to_the_node_log(
    env: Env, node_log: _Keep, command: str
) -> None:
    """The audit trail redacts a command's secrets (docs/audit.md); the node's log wrote the
    raw command (asyncssh logs each ``exec`` at INFO, on both legs) with the secret in it."""
    agent = await env.stack.agent()
    await agent.ssh("root@web-1", command)
    assert await env.stack.events("ssh.command")
    assert SECRET not in json.dumps(await env.stack.events(), default=str)  # redacted
    logged = "\n".join(node_log.lines)
    assert SECRET not in logged, logged


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--", b"cat /etc/\xff\xfe"], "cat /etc/\\xff\\xfe"),  # exec, not UTF-8
        (["-s", "--", b"sftp\xff"], "(subsystem sftp\\xff)"),  # subsystem, not ASCII
    ],
)
async def test_a_request_that_is_not_text_is_refused_and_audited(
    env: Env, argv: list[str | bytes], shown: str
) -> None:
    """Invariant 5: every action, allowed or not, produces an audit event. asyncssh refused
    an ``exec`` whose command is not UTF-8 (or a subsystem name that is not ASCII) before the
    broker saw it: ``exec request failed`` to the agent, nothing in the trail."""
    agent = await env.stack.agent()
    ssh = ["ssh", "-p", str(env.stack.broker.port), *agent.ssh_args(), "root@web-1@127.0.0.1"]
    status, out, err = await run([*ssh, *argv])
    assert (status, out) == (1, b""), err
    assert err.startswith(b"Tether: "), err
    decision = (await env.stack.events("decision"))[-1]
    assert (decision["decision"], decision["reason"]) == ("deny", "invalid-request")
    command = (await env.stack.events("ssh.command"))[-1]
    assert json.loads(command["action"])["command"] == shown
    assert received(env.sshd_dir) == []


@pytest.fixture
def bash_env(env: Env) -> Env:
    """The target runs commands with bash, as sshd does for a login whose shell is bash."""
    script = env.sshd_dir / "force-command.sh"
    text = script.read_text()
    assert 'exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"' in text
    script.write_text(text.replace('exec /bin/sh -c "$SSH_ORIGINAL_COMMAND"',
                                   'exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"'))  # fmt: skip
    return env


@pytest.mark.parametrize(
    "command",
    [
        "printf -v 'a[$(touch {marker})]' x",  # the conftest's rules allow "printf **"
        "printf -v'a[`touch {marker}`]' x",
        "printf '%s' 'a[$(touch {marker})]' | head -c 0; printf -v \"b[a[\\$(touch {marker})]]\" x",
    ],
)
async def test_a_quoted_word_bash_evaluates_never_runs(
    bash_env: Env, tmp_path: Path, command: str
) -> None:
    """The target's shell expands nothing (spec 5.2): every word is quoted. But bash's
    ``printf -v NAME`` (like ``read NAME``, ``test -v NAME``, ``let``) expands and evaluates
    an array subscript in NAME itself: allowed as ``printf **``, the target ran ``touch``."""
    marker = tmp_path / "pwned"
    agent = await bash_env.stack.agent()
    status, _, err = await agent.ssh("root@web-1", command.format(marker=marker))
    assert not marker.exists(), "the target ran code hidden in a quoted word"
    assert status == 1 and err.startswith(b"Tether: denied: shell-construct"), err
    assert received(bash_env.sshd_dir) == []


async def test_bash_runs_the_commands_still_allowed(bash_env: Env) -> None:
    agent = await bash_env.stack.agent()
    status, out, err = await agent.ssh("root@web-1", "printf -v x '[%s]' 'a[1]' && echo ok")
    assert (status, out) == (0, b"ok\n"), err


async def test_the_recorded_command_is_redacted_like_its_audit_event(env: Env) -> None:
    """docs/recordings.md: secrets must not land in recordings (keystrokes are off, only TERM
    and SHELL of the environment are kept). The cast's header kept the command in clear,
    ``--token=...`` included, while its ``ssh.command`` event redacts it."""
    agent = await env.stack.agent()
    status, _, err = await agent.ssh("root@web-1", f"echo --token={SECRET}")
    assert status == 0, err
    casts = list(env.stack.broker.context.recordings.rglob("*.cast.gz"))
    assert len(casts) == 1
    header = read_header(casts[0])
    assert SECRET not in header["command"] and header["command"].startswith("echo --token=")
    event = (await env.stack.events("ssh.command"))[-1]
    assert json.loads(event["action"])["command"] == header["command"]


async def test_refused_remote_and_socket_forwards_are_audited(env: Env) -> None:
    """Invariant 5: ``ssh -R`` and forwards to a Unix socket are never carried out, and were
    refused by asyncssh with nothing in the audit trail."""
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn:
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", 22)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_path("/tmp/tether-s19.sock", "/tmp/x.sock")
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_unix_connection("/run/docker.sock")
    refused: list[dict[str, str]] = []
    for _ in range(100):  # the socket forward's refusal is audited beside its answer
        refused = [
            json.loads(e["action"])["ssh"]
            for e in await env.stack.events("decision")
            if e["reason"] == "invalid-request"
        ]
        if len(refused) >= 3:
            break
        await asyncio.sleep(0.02)
    assert refused == [
        {"remote_forward": "127.0.0.1:0"},
        {"remote_forward": "/tmp/tether-s19.sock"},
        {"forward_socket": "/run/docker.sock"},
    ]
