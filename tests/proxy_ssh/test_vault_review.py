"""A target whose stored row no longer validates (edited behind Tether's back) is a refused,
audited login, not an error out of the authentication callback."""

from __future__ import annotations

import asyncio

from sqlalchemy import update

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import received
from tether.vault.schema import targets


async def test_a_target_row_that_no_longer_validates_is_a_refused_login(env: Env) -> None:
    async with env.stack.store.engine.begin() as conn:
        await conn.execute(
            update(targets).where(targets.c.name == "web-1").values(spec={"host": "127.0.0.1"})
        )
    await asyncio.sleep(1.1)  # the broker's one-second cache of the target has expired
    agent = await env.stack.agent()
    status, out, err = await agent.ssh("root@web-1", "echo hi")
    assert status == 255 and out == b"" and b"Permission denied" in err, err
    reasons = [e["reason"] for e in await env.stack.events("token.refused")]
    assert any("stored target 'web-1' is invalid" in reason for reason in reasons), reasons
    assert received(env.sshd_dir) == []
