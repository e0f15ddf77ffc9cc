"""A live SSH session of a delegation chain ends with any link of the chain.

alice delegates to ``deploy-bot``; that delegated token is the actor token of carol's
delegation, and the agent's SSH certificate is issued under carol's (chained) token. A real
broker and ``sshd``, the real admin API (httpx's ASGI transport) on the same store and
identity service: disabling alice (the first user), disabling carol (the last), or revoking
alice's token (the intermediate one, ``POST /v1/revocations``) ends the live ``ssh``
session within a second, and a new login with the certificate is refused.

Before the fix the chained token named only the agent and nothing it came from: disabling
alice or revoking her token left the session (and new ones) running.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import live_session, policy, received
from tests.proxy_ssh.test_user_disable import DELEGATED
from tether.api import AppState, create_app
from tether.identity.admintokens import create_admin_token
from tether.store import credentials as cred_store
from tether.users.service import UserService


@pytest.mark.parametrize("how", ["disable-alice", "disable-carol", "revoke-alices-token"])
async def test_a_chained_session_ends_with_any_link(env: Env, how: str) -> None:
    stack = env.stack
    stack.holder.replace(policy(DELEGATED).current)
    users = UserService(stack.store.engine, stack.identity.cipher)
    for user in ("alice", "carol"):
        await users.add(user, password=None, groups=["finance"])
    app = create_app(
        AppState(stack.holder, stack.store, stack.identity, stack.auditor, users=users)
    )
    admin, _ = await create_admin_token(
        stack.store.engine, stack.identity.sealer, name="t", now=datetime.now(UTC)
    )
    chained = await stack.agent(
        on_behalf_of=("carol", ["finance"]), through=[("alice", ["finance"])]
    )
    async with stack.store.engine.connect() as conn:
        issued = await cred_store.list_credentials(conn, agent_id="deploy-bot")
    (alices_token,) = [c.jti for c in issued if c.subject == "alice"]

    process = await live_session(stack.broker.port, chained, env.sshd_dir)

    headers = {"Authorization": f"Bearer {admin}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
        started = time.monotonic()
        if how == "revoke-alices-token":
            body = {"kind": "token", "value": alices_token, "reason": "leaked"}
            answer = await http.post("/v1/revocations", json=body, headers=headers)
        else:
            answer = await http.post(f"/v1/users/{how.removeprefix('disable-')}/disable",
                                     headers=headers)  # fmt: skip
    assert answer.status_code in (200, 201), answer.text
    await asyncio.wait_for(process.wait(), 5)
    assert time.monotonic() - started <= 1.5
    assert process.returncode == 255

    status, _, err = await chained.ssh("root@web-1", "echo again")
    assert status == 255, err
    assert received(env.sshd_dir) == ["sleep 60"]
    await stack.broker.stop()
    ends = [e for e in await stack.events("session.end") if e["user"] == "carol"]
    assert [e["reason"] for e in ends] == ["revoked"]
    assert chained.claims.delegators == ("carol", "alice")
    assert chained.claims.derived_from[0] == alices_token
