"""Probes of a red-team review of the SSH/SFTP broker, end to end against OpenSSH: each
one failed before its fix (this "this host" forward, a session whose start event failed,
a revocation during the dial, refusals that left no event, an agent hanging up mid-output).
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncssh
import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import policy, received
from tether.audit.log import AuditUnavailable

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
      forwards: ["127.0.0.1:*", "localhost:*", "::1:*"]
"""


# --- F1: 0.0.0.0 reaches the loopback a deny rule protects ----------------------------------


@pytest.mark.parametrize(("host", "listen"), [("0.0.0.0", "127.0.0.1"), ("::", "::1")])
async def test_forward_to_the_unspecified_address_reaches_the_denied_loopback(
    env: Env, host: str, listen: str
) -> None:
    """``0.0.0.0`` is a canonical dotted quad, so it passes ``canonical_host``; on Linux (and
    the BSDs) connect() to it reaches the local host: the listener on 127.0.0.1 that
    ``never-the-loopback`` denies. Same class as test_review_probes' 127.1/LOCALHOST."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"reached")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, listen, 0)
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


# --- F2: a session whose start event failed is never watched (no revocation) -----------------


async def test_a_session_whose_start_was_not_audited_still_ends_on_revocation(env: Env) -> None:
    """``auth_completed`` starts ``BrokerSession.start()`` as a background task, which
    awaited the ``session.start`` event and only then put the session under the revocation
    watcher: when that one append failed (a transient store error) the session was never
    checked again, and a revoked task's commands still ran. Now it is watched first, and a
    start that cannot be audited ends it."""
    auditor = env.stack.auditor
    real = auditor.session_start
    failed = []

    async def flaky(*args: object, **kwargs: object) -> int:
        if not failed:
            failed.append(1)
            raise AuditUnavailable("audit trail unavailable: transient")
        return await real(*args, **kwargs)

    auditor.session_start = flaky  # type: ignore[method-assign]
    agent = await env.stack.agent()
    after = None
    try:
        async with agent.connect("root@web-1") as conn:
            first = await conn.run("echo before", check=False)
            assert first.exit_status == 0, first.stderr
            await env.stack.identity.revoke("task", "T-1", reason="incident", by="admin")
            await asyncio.sleep(3)  # live_check_interval is 0.5 s, the revocation poll 1 s
            with contextlib.suppress(asyncssh.Error, OSError, asyncio.TimeoutError):
                after = await asyncio.wait_for(conn.run("echo after-revocation", check=False), 10)
    except (asyncssh.Error, OSError):
        pass  # the session was ended: what should happen
    assert failed, "the fault was not injected"
    assert "echo after-revocation" not in received(env.sshd_dir), (
        "a revoked session kept running commands on the target",
        None if after is None else after.stdout,
    )


# --- F3: refusals that leave no audit event --------------------------------------------------


async def _count(env: Env) -> int:
    return len(await env.stack.events())


async def _settle(env: Env) -> int:
    """The number of events once nothing more is being written."""
    last = -1
    for _ in range(50):
        now = await _count(env)
        if now == last:
            return now
        last = now
        await asyncio.sleep(0.1)
    return last


async def test_a_refused_sftp_symlink_is_audited(env: Env) -> None:
    """Invariant 5: every action, allowed or not, produces an audit event. ``symlink`` (and
    hard links) were refused with no event: ``ln -s /etc/shadow /tmp/x`` left no trace."""
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        await sftp.stat("/tmp")  # the session is up and a first decision is written
        before = await _settle(env)
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.symlink("/etc/shadow", "/tmp/tether-review-link")
        after = await _settle(env)
    assert after > before, "the refused symlink left no audit event"


async def test_a_path_that_is_not_utf8_is_refused_and_audited(env: Env) -> None:
    """A path the policy cannot be asked about is refused, and the refusal is a decision
    event (``invalid-request``) naming the path with its odd bytes escaped."""
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn, conn.start_sftp_client() as sftp:
        await sftp.stat("/tmp")
        before = await _settle(env)
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sftp.stat(b"/tmp/\xff\xfe")
        await _settle(env)
    after = await env.stack.events()
    assert len(after) > before, "the refused path left no audit event"
    last = after[before]
    assert (last["kind"], last["decision"], last["reason"]) == ("decision", "deny",
                                                                "invalid-request")  # fmt: skip
    assert json.loads(last["action"])["files"] == {"op": "stat", "path": "/tmp/\\xff\\xfe"}


async def test_a_refused_subsystem_is_audited(env: Env) -> None:
    """Invariant 5 again: a ``subsystem`` other than sftp (``ssh -s host netconf``) was
    refused with a stderr line and exit status 1, and nothing written to the trail."""
    agent = await env.stack.agent()
    async with agent.connect("root@web-1") as conn:
        await conn.run("true", check=False)
        before = await _settle(env)
        result = await conn.run(subsystem="netconf", check=False)
        assert result.exit_status == 1
        after = await _settle(env)
    assert after > before, "the refused subsystem left no audit event"
    assert received(env.sshd_dir) == ["true"]


# --- F4: a command decided before a revocation runs on the target after it -------------------


async def test_a_revocation_during_the_dial_stops_the_command(env: Env) -> None:
    """A revocation disconnects the agent and closes the upstream connection the session
    has; a dial still in progress (a slow target, the 32-dial queue under load) was not
    stopped: once it completed, the command ran on the target after the session had ended
    (and that connection stayed open)."""
    agent = await env.stack.agent()
    context = env.stack.broker.context
    context.dials = asyncio.Semaphore(0)  # the dial waits, as behind a slow target
    try:
        async with agent.connect("root@web-1") as conn:
            task = asyncio.ensure_future(conn.run("echo ran-after-revocation", check=False))
            for _ in range(500):
                if await env.stack.events("decision"):
                    break
                await asyncio.sleep(0.01)
            await env.stack.identity.revoke("task", "T-1", reason="incident", by="admin")
            with contextlib.suppress(asyncssh.Error, OSError, asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), 5)  # the session is ended
            assert not context.sessions, "the revocation did not end the session"
    except (asyncssh.Error, OSError):
        pass
    ended = await env.stack.events("session.end")
    context.dials.release()  # the target answers now
    await asyncio.sleep(3)
    assert ended and ended[-1]["reason"] == "revoked"
    assert "echo ran-after-revocation" not in received(env.sshd_dir), (
        "the command ran on the target after its session was ended by the revocation"
    )


# --- F5: an agent that hangs up mid-output leaves no ssh.command event ----------------------


async def test_a_command_whose_agent_hangs_up_is_still_audited(env: Env) -> None:
    """The ``ssh.command`` event (exit status, output bytes, the recording's id and digest
    that bind it to the chain) was written only after the pump returned: when the agent
    went away while output was flowing the exception escaped, and the trail had only the
    decision for a command that ran."""
    agent = await env.stack.agent()
    command = "head -c 200000000 /dev/zero"
    got = 0
    async with agent.connect("root@web-1") as conn:
        await conn.create_session(asyncssh.SSHClientSession, command)
        for _ in range(500):
            if command in received(env.sshd_dir):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # output is flowing
        got = 1
        conn.abort()  # the agent hangs up mid-output
    await asyncio.sleep(3)
    assert got and command in received(env.sshd_dir)
    events = await env.stack.events("ssh.command")
    assert [e for e in events if command in str(e["action"])], (
        "no ssh.command event for a command that ran",
        [e["kind"] for e in await env.stack.events()],
    )
