"""Approvals through the real SSH front-end and a real OpenSSH target: the refusal on
standard error names the access request; once approved, exactly that command reaches the
target, and a different one is still refused."""

from __future__ import annotations

import dataclasses

from tests.proxy_ssh.conftest import (  # noqa: F401 - the fixtures
    Env,
    env,
    sshd,
    stack,
    target_ca_line,
)
from tests.proxy_ssh.harness import received
from tether.approvals.service import ApprovalService
from tether.audit.store import EventFilter, search_events
from tether.users.service import UserService


async def test_ssh_refusal_names_the_request_and_the_grant_is_exact(env: Env) -> None:  # noqa: F811
    holder = env.stack.holder
    approvals = ApprovalService(env.stack.store.engine, lambda: holder.current,
                                env.stack.identity.sealer, auditor=env.stack.auditor)  # fmt: skip
    context = env.stack.broker.context
    context.services = dataclasses.replace(context.services, approvals=approvals)
    ops = await UserService(env.stack.store.engine, env.stack.identity.cipher).add(
        "ola", password=None, groups=["ops"]
    )
    agent = await env.stack.agent()

    status, _, err = await agent.ssh("root@web-1", "systemctl restart nginx")
    assert status != 0 and b"approval required by rule restart-needs-approval" in err
    (pending,) = await approvals.search(status="pending")
    assert pending.id.encode() in err and f"/v1/access-requests/{pending.id}".encode() in err
    assert pending.action == {"command": "systemctl restart nginx"}
    assert received(env.sshd_dir) == []

    await approvals.approve(pending.id, ops, "maintenance window")
    await agent.ssh("root@web-1", "'systemctl' restart nginx")  # same words: the same action
    assert received(env.sshd_dir) == ["systemctl restart nginx"]
    _, _, err = await agent.ssh("root@web-1", "systemctl restart postgres")
    assert b"approval required" in err
    assert received(env.sshd_dir) == ["systemctl restart nginx"]


async def test_ssh_command_no_decision_could_be_made_for_is_refused_and_audited(
    env: Env,  # noqa: F811
) -> None:
    """The store fails while an approval rule's grants are read (its table is gone): the
    command is refused like a denied one and its decision event says why; the target
    never sees it (was: an unaudited "internal error" on the channel)."""
    holder = env.stack.holder
    approvals = ApprovalService(env.stack.store.engine, lambda: holder.current,
                                env.stack.identity.sealer, auditor=env.stack.auditor)  # fmt: skip
    context = env.stack.broker.context
    context.services = dataclasses.replace(context.services, approvals=approvals)
    agent = await env.stack.agent()
    async with env.stack.store.engine.begin() as conn:
        await conn.exec_driver_sql("DROP TABLE access_requests")

    status, _, err = await agent.ssh("root@web-1", "systemctl restart nginx")
    assert status != 0 and b"no decision could be made" in err
    assert b"OperationalError" not in err and b"access_requests" not in err
    assert received(env.sshd_dir) == []
    async with env.stack.store.engine.connect() as conn:
        (event,) = await search_events(conn, EventFilter(kind="decision"), limit=10)
    assert event.decision == "deny" and event.reason == "internal-error"
    assert event.action == {"ssh": {"command": "systemctl restart nginx"}}
