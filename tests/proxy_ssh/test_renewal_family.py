"""A live SSH session of a renewed token ends with any token of its renewal family.

The agent's token is renewed twice (a chain, as a thief holding the token and its key
would); the SSH certificate is issued under the last renewal, or under the original token.
A real broker and ``sshd``, the real admin API (``POST /v1/revocations``, httpx's ASGI
transport) on the same store and identity service: revoking the original token ends the
live ``ssh`` session of the renewal's certificate within the interval of the other
revocation tests, and revoking a renewal ends the original's; a new login is refused.

Before the fix a renewal named nothing it came from: revoking the stolen original left the
renewal's sessions (and new ones) running.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import live_session, received
from tether.api import AppState, create_app
from tether.identity.admintokens import create_admin_token
from tether.store import credentials as cred_store


@pytest.mark.parametrize("how", ["session-of-renewal", "session-of-original"])
async def test_a_session_ends_with_any_token_of_its_family(env: Env, how: str) -> None:
    stack = env.stack
    app = create_app(AppState(stack.holder, stack.store, stack.identity, stack.auditor))
    admin, _ = await create_admin_token(
        stack.store.engine, stack.identity.sealer, name="t", now=datetime.now(UTC)
    )
    renewals = 2 if how == "session-of-renewal" else 0
    agent = await stack.agent(renewals=renewals)
    async with stack.store.engine.connect() as conn:
        issued = await cred_store.list_credentials(conn, agent_id="deploy-bot")
    tokens = {c.jti: c for c in issued if c.kind == "access_token"}  # one family
    assert len(tokens) == 1 + renewals
    assert {c.family for c in tokens.values()} == {agent.claims.family}
    original = tokens[str(agent.claims.family)]  # the family is named by its first token
    if how == "session-of-renewal":
        assert agent.claims.jti != original.jti
        revoked = original.jti  # the stolen token
    else:
        assert agent.claims.jti == original.jti
        renewal = await stack.renew(agent.claims)  # a thief's renewal of the agent's token
        revoked = renewal.claims.jti

    process = await live_session(stack.broker.port, agent, env.sshd_dir)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
        started = time.monotonic()
        body = {"kind": "token", "value": revoked, "reason": "stolen"}
        answer = await http.post(
            "/v1/revocations", json=body, headers={"Authorization": f"Bearer {admin}"}
        )
    assert answer.status_code == 201, answer.text
    assert answer.json()["family"] == original.jti
    await asyncio.wait_for(process.wait(), 5)
    assert time.monotonic() - started <= 1.5
    assert process.returncode == 255

    status, _, err = await agent.ssh("root@web-1", "echo again")
    assert status == 255, err
    assert received(env.sshd_dir) == ["sleep 60"]
    await stack.broker.stop()
    ends = await stack.events("session.end")
    assert [e["reason"] for e in ends] == ["revoked"]
    certificates = [c.jti for c in issued if c.kind == "ssh_certificate"]
    assert set(certificates) <= set(answer.json()["ended"])  # the event names the session's
