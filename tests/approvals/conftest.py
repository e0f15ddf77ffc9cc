"""A real Tether API on a loopback port: identity, audit trail, users and approvals over one
SQLite store, with a clock the test moves; agents speak DPoP, humans personal tokens. And
``world``: the approval service alone over a real store, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.approvals.helpers import POLICY, Clock, fresh_cipher, policies
from tests.identity_e2e.conftest import TOKEN_URL, Agent, Stack, build_service, join_form
from tests.node_loop import pytest_asyncio_loop_factories  # noqa: F401 - the node's loop
from tether.api import AppState, PolicyHolder, create_app
from tether.approvals.service import ApprovalService
from tether.audit.config import AuditConfig
from tether.audit.startup import start_auditor
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.admintokens import create_admin_token
from tether.policy import PolicySource, load_policies
from tether.store import Store
from tether.store import agents as agent_store
from tether.users.service import UserService
from tether.users.store import User

ISSUER = "http://tether"


@dataclass
class Api:
    stack: Stack
    http: httpx.AsyncClient
    admin: dict[str, str]
    approvals: ApprovalService
    holder: PolicyHolder
    users: UserService

    @property
    def clock(self) -> Clock:
        return self.stack.clock

    async def agent(self, agent_id: str = "bot", task: str = "T-1", owner: str = "olivia") -> Agent:
        created = await self.http.post(
            "/v1/agents", json={"id": agent_id, "owner": owner}, headers=self.admin
        )
        assert created.status_code in (201, 409), created.text
        minted = await self.http.post(f"/v1/agents/{agent_id}/join-tokens", headers=self.admin)
        agent = Agent(agent_id)
        form = join_form(minted.json()["join_token"], task, requested_lifetime="3600")
        proof = self.stack.proof(agent, "POST", TOKEN_URL)
        answer = await self.http.post("/oauth/token", data=form, headers={"DPoP": proof})
        assert answer.status_code == 200, answer.text
        agent.token = answer.json()["access_token"]
        return agent

    async def as_agent(self, agent: Agent, method: str, path: str, **kw: Any) -> httpx.Response:
        proof = self.stack.proof(agent, method, ISSUER + path.split("?")[0], token=agent.token)
        headers = {"Authorization": f"DPoP {agent.token}", "DPoP": proof}
        return await self.http.request(method, path, headers=headers, **kw)

    async def human(
        self, name: str, *groups: str, roles: tuple[str, ...] = ("approver",)
    ) -> dict[str, str]:
        password = secrets.token_urlsafe(16)
        body = {"id": name, "password": password, "groups": list(groups), "roles": list(roles)}
        created = await self.http.post("/v1/users", json=body, headers=self.admin)
        assert created.status_code == 201, created.text
        login = await self.http.post("/v1/login", json={"user": name, "password": password})
        assert login.status_code == 201, login.text
        return {"Authorization": f"Bearer {login.json()['token']}"}


def free_socket() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    identity = await build_service(store, clock, cipher)
    holder = PolicyHolder(load_policies([PolicySource("approvals.yaml", POLICY)]))
    auditor = await start_auditor(AuditConfig(), store.engine, lambda: identity.keys.ring.active)
    approvals = ApprovalService(
        store.engine, lambda: holder.current, identity.sealer, auditor=auditor,
        revoked=identity.revoked, clock=clock,
    )  # fmt: skip
    identity.revocation_listeners.append(approvals.on_revocation)
    users = UserService(store.engine, cipher, clock=clock)
    state = AppState(holder, store, identity, auditor, approvals=approvals, users=users)
    sock = free_socket()
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), log_config=None, lifespan="off", log_level="warning")
    )
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    token, _ = await create_admin_token(store.engine, identity.sealer, name="test", now=clock())
    port = sock.getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield Api(Stack(store, clock, cipher, identity), http,
                      {"Authorization": f"Bearer {token}"}, approvals, holder, users)  # fmt: skip
    finally:
        server.should_exit = True
        await serving
        await auditor.log.close()
        await store.close()


@dataclass
class World:
    """An approval service over a real store (``store_url``: SQLite and PostgreSQL), its
    users and two agents owned by olivia."""

    store: Store
    clock: Clock
    users: UserService
    approvals: ApprovalService

    async def user(self, name: str, *groups: str) -> User:
        return await self.users.add(name, password=None, groups=groups, roles=["approver"])


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[World]:
    store = await Store.open(store_url)
    clock = Clock()
    policy_set, cipher = policies(), fresh_cipher()
    async with store.engine.begin() as conn:
        for agent in ("bot", "other-bot"):
            await agent_store.create_agent(
                conn, cipher.sealer, id=agent, owner="olivia", now=clock()
            )
    service = ApprovalService(store.engine, lambda: policy_set, cipher.sealer, clock=clock)
    try:
        yield World(store, clock, UserService(store.engine, cipher, clock=clock), service)
    finally:
        await store.close()
