"""SSH logins when the rows their claims are rebuilt from were changed in the database
behind Tether's back (migration 0019; docs/vault.md, "Tampering with the database"): a
certificate record whose scope was widened, a runtime given other labels, a record planted
for a bare key of the writer's own. Each login is refused (audited) and nothing reaches the
target; a newer planted record does not hide the genuine one."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from sqlalchemy import delete, insert, select, update

from tests.proxy_ssh.conftest import RULES, Env
from tests.proxy_ssh.harness import Agent, live_session, plain_key_stack, received
from tests.proxy_ssh.test_auth import assert_refused, refusal_reasons
from tether.store.schema import credentials, revocations, runtimes


async def _set_records(agent: Agent, **values: Any) -> None:
    async with agent.stack.store.engine.begin() as conn:
        where = credentials.c.agent_id == agent.id
        await conn.execute(update(credentials).where(where).values(values))


async def test_a_certificate_record_with_a_widened_scope_is_refused(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await env.stack.agent()
    status, out, _ = await agent.ssh("root@web-1", "echo hi")
    assert (status, out) == (0, b"hi\n")
    await _set_records(agent, scope=[*agent.claims.scope, "prod-db"])
    with caplog.at_level(logging.ERROR, "tether.crypto.seal"):
        status, out, err = await agent.ssh("root@web-1", "echo again")
    assert status == 255 and out == b"" and b"Permission denied" in err
    assert "Tether has no record of this certificate" in await refusal_reasons(env)
    assert "its seal does not verify" in caplog.text
    assert received(env.sshd_dir) == ["echo hi"]  # the first login only


async def test_a_runtime_given_other_labels_is_refused(env: Env) -> None:
    agent = await env.stack.agent()
    async with env.stack.store.engine.begin() as conn:
        await conn.execute(
            update(runtimes)
            .where(runtimes.c.id == agent.claims.runtime.id)
            .values(labels={"env": "prod"})
        )
    await assert_refused(env, agent, "the certificate's runtime is unknown")


async def test_a_record_planted_for_a_bare_key_opens_nothing(tmp_path: Path, env: Env) -> None:
    stack = await plain_key_stack(tmp_path / "plain", env.stack, RULES)
    try:
        agent = await stack.agent()
        agent.cert_path = Path("/dev/null")
        async with stack.store.engine.begin() as conn:
            genuine = (await conn.execute(select(credentials).where(
                credentials.c.agent_id == agent.id, credentials.c.kind == "ssh_certificate"
            ))).mappings().one()  # fmt: skip
            mine = asyncssh.generate_private_key("ssh-ed25519")
            later = genuine["expires_at"].replace(year=genuine["expires_at"].year + 1)
            for jti, serial, key in (("planted-1", "91", mine), ("planted-2", "92", None)):
                fingerprint = genuine["key_thumbprint"] if key is None else key.get_fingerprint(
                    "sha256"
                )  # fmt: skip
                row = {**genuine, "jti": jti, "serial": serial, "key_thumbprint": fingerprint,
                       "expires_at": later}  # fmt: skip
                await conn.execute(insert(credentials).values(row))  # its seal copied: wrong
        # The writer's own key, under a record copied from the genuine one: refused.
        thief = await stack.agent("thief-bot")
        thief.key_path.write_bytes(mine.export_private_key("openssh"))
        thief.cert_path = Path("/dev/null")
        status, _, _ = await thief.ssh("root@web-1", "echo plain")
        assert status == 255
        # A newer planted record for the genuine key does not hide the genuine record.
        status, out, err = await agent.ssh("root@web-1", "echo plain")
        assert (status, out) == (0, b"plain\n"), err
        assert [r for r in received(env.sshd_dir) if "thief" in str(r)] == []
    finally:
        await stack.close()


async def test_a_deleted_revocation_ends_live_sessions_and_refuses_logins(env: Env) -> None:
    """The revocation ledger (migration 0021), over a real OpenSSH client and server: once
    the broker's node sees a revocation deleted behind Tether's back (its watcher's next
    poll), a live session ends at its next check, a new login is refused naming why, and
    nothing more reaches the target."""
    stack = env.stack
    agent = await stack.agent()
    process = await live_session(stack.broker.port, agent, env.sshd_dir)
    await stack.identity.revoke("task", "T-unrelated", reason="done", by="admin")
    async with stack.store.engine.begin() as conn:
        await conn.execute(delete(revocations).where(revocations.c.value == "T-unrelated"))
    await stack.identity.refresh_revocations()  # what the node's watcher does every second
    await asyncio.wait_for(process.wait(), 5)
    assert process.returncode == 255
    status, out, err = await agent.ssh("root@web-1", "echo again")
    assert status == 255 and out == b"" and b"Permission denied" in err
    assert (await refusal_reasons(env))[-1] == "the revocation list does not verify"
    assert received(env.sshd_dir) == ["sleep 60"]
