"""Invariant 5 on the SSH broker: no audit event, no effect.

With the audit trail down (the writer stopped, as when the store is gone), an allowed
command is refused and never reaches the target, and neither does an SFTP upload.
"""

from __future__ import annotations

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import received


async def test_nothing_reaches_the_target_while_the_audit_trail_is_down(env: Env) -> None:
    agent = await env.stack.agent()
    status, out, _ = await agent.ssh("root@web-1", "echo audited")
    assert (status, out) == (0, b"audited\n")  # the path works while audited
    assert received(env.sshd_dir) == ["echo audited"]
    local = env.sshd_dir / "payload.txt"
    local.write_bytes(b"secret-free payload\n")
    status, _, err = await agent.sftp("root@web-1", f"put {local} {env.sshd_dir / 'first.txt'}\n")
    assert status == 0 and (env.sshd_dir / "first.txt").read_bytes() == local.read_bytes(), err

    await env.stack.auditor.log.close()  # the trail is down from here on

    status, out, _ = await agent.ssh("root@web-1", "echo unaudited")
    assert status != 0 and b"unaudited" not in out
    assert "echo unaudited" not in received(env.sshd_dir)  # the command never ran

    remote = env.sshd_dir / "uploaded.txt"
    status, _, _ = await agent.sftp("root@web-1", f"put {local} {remote}\n")
    assert status != 0 and not remote.exists()
