"""The store failing under the SSH broker (not the audit trail): a login that cannot be
checked is refused and audited (was: dropped by asyncssh with no audit event), and a
command whose agent labels cannot be read is refused with an audited deny (was: an
unaudited "internal error" on the channel). Nothing reaches the target."""

from __future__ import annotations

import asyncio

import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import received


async def rename(env: Env, table: str, to: str) -> None:
    async with env.stack.store.engine.begin() as conn:
        await conn.exec_driver_sql(f"ALTER TABLE {table} RENAME TO {to}")


async def test_a_login_that_cannot_be_checked_is_refused_and_audited(env: Env) -> None:
    agent = await env.stack.agent()
    assert (await agent.ssh("root@web-1", "echo before"))[0] == 0
    await rename(env, "targets", "targets_away")
    await asyncio.sleep(1.2)  # the target's cached row expires
    status, out, _ = await agent.ssh("root@web-1", "echo during")
    await rename(env, "targets_away", "targets")
    assert status == 255 and out == b""
    assert received(env.sshd_dir) == ["echo before"]
    refusals = await env.stack.events("token.refused")
    assert [e["reason"] for e in refusals] == [
        "the login could not be checked: internal error (OperationalError)"
    ]
    await asyncio.sleep(1.2)
    assert (await agent.ssh("root@web-1", "echo after"))[0] == 0  # back with the store


async def test_a_command_whose_labels_cannot_be_read_is_an_audited_deny(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await env.stack.agent()
    labels = env.stack.broker.context.services.agents

    async def unreadable(agent_id: str) -> dict[str, str]:
        raise OSError("disk I/O error")  # what a store failure raises in the lookup

    monkeypatch.setattr(labels, "get", unreadable)
    status, out, err = await agent.ssh("root@web-1", "echo refused")
    assert status != 0 and out == b"" and b"no decision could be made" in err
    assert received(env.sshd_dir) == []
    (decision,) = await env.stack.events("decision")
    assert decision["decision"] == "deny" and decision["reason"] == "internal-error"
