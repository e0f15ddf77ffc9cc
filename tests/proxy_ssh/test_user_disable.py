"""Disabling a user ends what agents do on their behalf, live sessions included.

A real broker and ``sshd``, the real admin API (``POST /v1/users/{id}/disable``, through
httpx's ASGI transport) on the same store and identity service: a live ``ssh`` session of
a certificate delegated by the user ends within a second of the disabling, a new login
with it is refused, the user delegates nothing more, and the agent's own certificate is
unaffected. Before the fix the delegated session went on and new delegations were issued.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests.proxy_ssh.conftest import Env
from tests.proxy_ssh.harness import live_session, policy, received
from tether.api import AppState, create_app
from tether.identity.admintokens import create_admin_token
from tether.identity.exchange import ExchangeError
from tether.users.service import UserService

DELEGATED = """
rules:
  - id: agent-commands
    effect: allow
    agents: [deploy-bot]
    targets: {labels: {env: test}}
    ssh: {commands: ["echo **", "sleep *"]}
  - id: finance-commands
    effect: allow
    groups: [finance]
    targets: {labels: {env: test}}
    ssh: {commands: ["echo **", "sleep *"]}
"""


async def test_disabling_a_user_ends_their_delegated_sessions(env: Env) -> None:
    stack = env.stack
    stack.holder.replace(policy(DELEGATED).current)
    users = UserService(stack.store.engine, stack.identity.cipher)
    await users.add("alice", password=None, groups=["finance"])
    app = create_app(
        AppState(stack.holder, stack.store, stack.identity, stack.auditor, users=users)
    )
    admin, _ = await create_admin_token(
        stack.store.engine, stack.identity.sealer, name="t", now=datetime.now(UTC)
    )
    for_alice = await stack.agent(on_behalf_of=("alice", ["finance"]))
    alone = await stack.agent()

    process = await live_session(stack.broker.port, for_alice, env.sshd_dir)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
        disabled_at = time.monotonic()
        answer = await http.post(
            "/v1/users/alice/disable", headers={"Authorization": f"Bearer {admin}"}
        )
    assert (answer.status_code, answer.json()["state"]) == (200, "disabled"), answer.text
    await asyncio.wait_for(process.wait(), 5)
    assert time.monotonic() - disabled_at <= 1.5
    assert process.returncode == 255
    change = [e for e in await stack.events("admin.change") if e["target"] == "user:alice"]
    assert json.loads(change[-1]["detail"])["delegations_revoked"] == 2  # token, certificate

    status, _, err = await for_alice.ssh("root@web-1", "echo again")
    assert status == 255, err
    assert (await stack.events("token.refused"))[-1]["reason"] == "the certificate is revoked"
    with pytest.raises(ExchangeError, match="the user is disabled"):
        await stack.delegate(alone.claims, "alice", ["finance"])
    status, out, err = await alone.ssh("root@web-1", "echo mine")
    assert (status, out) == (0, b"mine\n"), err
    assert received(env.sshd_dir) == ["sleep 60", "echo mine"]
    await stack.broker.stop()
    ends = [e for e in await stack.events("session.end") if e["user"] == "alice"]
    assert [e["reason"] for e in ends] == ["revoked"]
