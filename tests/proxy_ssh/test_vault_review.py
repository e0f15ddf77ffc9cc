"""A target whose stored row no longer validates (edited behind Tether's back) is a refused,
audited login, not an error out of the authentication callback; so is a target whose row
was redirected without the master key (its seal does not verify: docs/vault.md, "Tampering
with the database"), and the attacker's server never sees a connection."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select, update

from tests.listener import counting_listener
from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import received
from tether.vault.schema import targets
from tether.vault.targets import seal_columns


async def _row(env: Env) -> dict[str, Any]:
    async with env.stack.store.engine.connect() as conn:
        found = await conn.execute(select(targets).where(targets.c.name == "web-1"))
        return dict(found.mappings().one())


async def test_a_target_row_that_no_longer_validates_is_a_refused_login(env: Env) -> None:
    row = {**await _row(env), "spec": {"host": "127.0.0.1"}}  # invalid, yet sealed by Tether
    seal = env.stack.identity.sealer.seal("targets", seal_columns(row))
    async with env.stack.store.engine.begin() as conn:
        await conn.execute(
            update(targets).where(targets.c.name == "web-1").values(spec=row["spec"], seal=seal)
        )
    await asyncio.sleep(1.1)  # the broker's one-second cache of the target has expired
    agent = await env.stack.agent()
    status, out, err = await agent.ssh("root@web-1", "echo hi")
    assert status == 255 and out == b"" and b"Permission denied" in err, err
    reasons = [e["reason"] for e in await env.stack.events("token.refused")]
    assert any("stored target 'web-1' is invalid" in reason for reason in reasons), reasons
    assert received(env.sshd_dir) == []


async def test_a_target_redirected_in_the_database_is_a_refused_login(env: Env) -> None:
    async with counting_listener() as attacker:
        genuine = (await _row(env))["spec"]
        port = attacker.port
        async with env.stack.store.engine.begin() as conn:  # a valid spec, the seal kept
            await conn.execute(
                update(targets)
                .where(targets.c.name == "web-1")
                .values(spec={**genuine, "port": port})
            )
        await asyncio.sleep(1.1)  # the broker's one-second cache of the target has expired
        agent = await env.stack.agent()
        status, out, err = await agent.ssh("root@web-1", "echo hi")
        assert status == 255 and out == b"" and b"Permission denied" in err, err
        reasons = [e["reason"] for e in await env.stack.events("token.refused")]
        assert any(
            "stored target 'web-1' is refused: its seal does not verify" in reason
            for reason in reasons
        ), reasons
        assert attacker.connections == 0

        await env.stack.targets.replace("web-1", "ssh", genuine, {"env": "test"})  # sealed
        status, out, _ = await agent.ssh("root@web-1", "echo hi")
        assert (status, out) == (0, b"hi\n")
        assert attacker.connections == 0
