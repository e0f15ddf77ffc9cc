"""Nothing is issued for what is revoked or disabled, and every such refusal is audited.

Through the real API (httpx's ASGI transport) over a real SQLite store and hash-chained
trail: a revoked agent, task or runtime, a revoked actor and a disabled agent get no
token from any grant (join token, workload token, re-scoping, renewal, delegation) and no
certificate or certificate-bound token; each refusal is a ``token.refused`` event naming
why. Before the fix a join or workload token, a re-scoping or a delegation for a revoked
task, agent or runtime issued a token that every use then refused.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from sqlalchemy import text

from tests.identity_e2e.conftest import (
    TOKEN_URL,
    Agent,
    Clock,
    Stack,
    build_service,
    delegate_form,
    join_form,
    rescope_form,
)
from tether.api import AppState, PolicyHolder, create_app
from tether.audit.emit import Auditor
from tether.audit.log import AuditLog
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity import exchange as ex
from tether.identity.admintokens import create_admin_token
from tether.identity.errors import TokenRevoked
from tether.identity.issued import credential_record
from tether.policy import PolicySource, load_policies
from tether.store import Store
from tether.users.service import UserService

POLICY = "rules:\n  - {id: r, effect: allow, agents: [bot], targets: [t], mcp: {tools: [x]}}\n"
WORKLOAD_RUNTIME = "k8s/prod/billing-7f9c"


@dataclass
class Api:
    stack: Stack
    http: httpx.AsyncClient
    admin: dict[str, str]
    users: UserService

    async def events(self, kind: str) -> list[dict[str, Any]]:
        async with self.stack.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM audit_events ORDER BY seq"))).mappings()
            found = [dict(row) for row in rows if row["kind"] == kind]
        for row in found:
            row["action"], row["detail"] = json.loads(row["action"]), json.loads(row["detail"])
        return found

    async def create(self, agent_id: str) -> Agent:
        created = await self.http.post(
            "/v1/agents", json={"id": agent_id, "owner": "alice"}, headers=self.admin
        )
        assert created.status_code == 201, created.text
        return Agent(agent_id)

    async def join_token(self, agent_id: str) -> str:
        minted = await self.http.post(f"/v1/agents/{agent_id}/join-tokens", headers=self.admin)
        assert minted.status_code == 201, minted.text
        return str(minted.json()["join_token"])

    async def joined(self, agent_id: str = "bot", task: str = "T-1") -> Agent:
        agent = await self.create(agent_id)
        answer = await self.token(agent, join_form(await self.join_token(agent_id), task))
        assert answer.status_code == 200, answer.text
        agent.token = answer.json()["access_token"]
        return agent

    async def token(
        self, agent: Agent, form: dict[str, str], *, ath: str | None = None
    ) -> httpx.Response:
        proof = self.stack.proof(agent, "POST", TOKEN_URL, token=ath)
        return await self.http.post("/oauth/token", data=form, headers={"DPoP": proof})

    async def call(
        self, agent: Agent, path: str, body: dict[str, Any] | None = None
    ) -> httpx.Response:
        """POST ``body`` to ``path`` with the agent's token, or GET it without a body."""
        method = "GET" if body is None else "POST"
        proof = self.stack.proof(agent, method, f"http://tether{path}", token=agent.token)
        headers = {"Authorization": f"DPoP {agent.token}", "DPoP": proof}
        return await self.http.request(method, path, headers=headers, json=body)

    async def revoke(self, kind: str, value: str) -> None:
        body = {"kind": kind, "value": value, "reason": "incident"}
        answer = await self.http.post("/v1/revocations", json=body, headers=self.admin)
        assert answer.status_code == 201, answer.text

    async def refused(self, answer: httpx.Response, status: int, error: str, reason: str) -> None:
        """``answer`` is the refusal, and the trail's last ``token.refused`` event says so."""
        assert (answer.status_code, answer.json()["error"]) == (status, error), answer.text
        assert answer.json()["detail"] == reason
        event = (await self.events("token.refused"))[-1]
        assert (event["decision"], event["reason"]) == ("deny", reason)
        assert (event["detail"]["error"], event["detail"]["status"]) == (error, status)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    service = await build_service(store, clock, cipher)
    log = AuditLog(store.engine, lambda: service.keys.ring.active)
    await log.start()
    holder = PolicyHolder(load_policies([PolicySource("a.yaml", POLICY)]))
    users = UserService(store.engine, cipher, clock=clock)
    app = create_app(AppState(holder, store, service, Auditor(log), users=users))
    token, _ = await create_admin_token(store.engine, cipher.sealer, name="test", now=clock())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
            yield Api(
                Stack(store, clock, cipher, service),
                http,
                {"Authorization": f"Bearer {token}"},
                users,
            )
    finally:
        await log.close()
        await store.close()


def workload_form(token: str, task: str = "T-1") -> dict[str, str]:
    return {**join_form(token, task), "subject_token_type": ex.JWT}


def csr_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(Encoding.PEM).decode()


# --- join tokens ------------------------------------------------------------------------------


async def test_join_for_a_revoked_task_is_refused_and_the_join_token_kept(api: Api) -> None:
    agent = await api.create("bot")
    join = await api.join_token("bot")
    await api.revoke("task", "T-9")
    refused = await api.token(agent, join_form(join, "T-9"))
    await api.refused(refused, 400, "invalid_grant", "the task is revoked")
    assert (await api.token(agent, join_form(join, "T-1"))).status_code == 200  # not burnt


async def test_join_of_a_revoked_agent_is_refused(api: Api) -> None:
    agent = await api.create("bot")
    join = await api.join_token("bot")
    await api.revoke("agent", "bot")  # revoked, not offboarded: its state is still active
    refused = await api.token(agent, join_form(join))
    await api.refused(refused, 400, "invalid_grant", "the agent is revoked")


async def test_no_join_token_for_a_revoked_agent(api: Api) -> None:
    await api.create("bot")
    await api.revoke("agent", "bot")
    minted = await api.http.post("/v1/agents/bot/join-tokens", headers=api.admin)
    assert (minted.status_code, minted.json()["detail"]) == (409, "agent 'bot' is not active")


async def test_join_into_a_revoked_runtime_is_refused(api: Api) -> None:
    agent = await api.create("bot")
    join = await api.join_token("bot")
    await api.revoke("runtime", "join/" + join.removeprefix("tjt_").split(".")[0])
    refused = await api.token(agent, join_form(join))
    await api.refused(refused, 400, "invalid_grant", "the runtime is revoked")


async def test_join_of_a_disabled_agent_is_refused(api: Api) -> None:
    agent = await api.create("bot")
    join = await api.join_token("bot")
    assert (await api.http.post("/v1/agents/bot/disable", headers=api.admin)).status_code == 200
    refused = await api.token(agent, join_form(join))
    reason = "the join token is unknown, used, expired or its agent inactive"
    await api.refused(refused, 400, "invalid_grant", reason)


# --- workload tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "task", "reason"),
    [
        ("runtime", WORKLOAD_RUNTIME, "T-1", "the runtime is revoked"),
        ("task", "T-9", "T-9", "the task is revoked"),
        ("agent", "billing", "T-1", "the agent is revoked"),
    ],
)
async def test_workload_attestation_for_something_revoked_is_refused(
    api: Api, kind: str, value: str, task: str, reason: str
) -> None:
    agent = await api.create("billing")
    await api.revoke(kind, value)
    refused = await api.token(agent, workload_form(api.stack.workload_token(), task))
    await api.refused(refused, 400, "invalid_grant", reason)
    async with api.stack.engine.connect() as conn:  # refused before the runtime was recorded
        runtimes = (await conn.execute(text("SELECT id FROM runtimes"))).all()
    assert runtimes == []


async def test_workload_attestation_of_a_disabled_agent_is_refused(api: Api) -> None:
    agent = await api.create("billing")
    assert (await api.http.post("/v1/agents/billing/disable", headers=api.admin)).is_success
    refused = await api.token(agent, workload_form(api.stack.workload_token()))
    await api.refused(refused, 400, "invalid_grant", "the agent is not active")


# --- tokens derived from a token --------------------------------------------------------------


async def test_rescoping_into_a_revoked_task_is_refused(api: Api) -> None:
    agent = await api.joined()
    await api.revoke("task", "T-9")
    refused = await api.token(agent, rescope_form(agent.token, "T-9"), ath=agent.token)
    await api.refused(refused, 400, "invalid_grant", "the task is revoked")
    renewed = await api.token(agent, rescope_form(agent.token, "T-1"), ath=agent.token)
    assert renewed.status_code == 200, renewed.text  # its own task is not revoked


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("agent", "the agent is revoked"), ("task", "the task is revoked")],
)
async def test_renewal_of_a_revoked_token_is_refused(api: Api, kind: str, reason: str) -> None:
    agent = await api.joined()
    await api.revoke(kind, "bot" if kind == "agent" else "T-1")
    refused = await api.token(agent, rescope_form(agent.token, "T-1"), ath=agent.token)
    await api.refused(refused, 401, "invalid_token", reason)


async def test_delegation_into_a_revoked_task_is_refused(api: Api) -> None:
    agent = await api.joined()
    await api.revoke("task", "T-9")
    form = delegate_form(api.stack.user_token("alice"), agent.token, "T-9")
    refused = await api.token(agent, form, ath=agent.token)
    await api.refused(refused, 400, "invalid_grant", "the task is revoked")


async def test_disabled_agent_gets_no_derived_token(api: Api) -> None:
    agent = await api.joined()
    assert (await api.http.post("/v1/agents/bot/disable", headers=api.admin)).is_success
    refused = await api.token(agent, rescope_form(agent.token, "T-2"), ath=agent.token)
    await api.refused(refused, 401, "invalid_token", "the agent is disabled")
    form = delegate_form(api.stack.user_token("alice"), agent.token, "T-2")
    refused = await api.token(agent, form, ath=agent.token)
    await api.refused(refused, 401, "invalid_token", "the agent is disabled")


# --- certificates -----------------------------------------------------------------------------


@pytest.mark.parametrize("disable", [False, True])
async def test_no_certificate_for_a_revoked_task_or_disabled_agent(api: Api, disable: bool) -> None:
    agent = await api.joined()
    if disable:
        assert (await api.http.post("/v1/agents/bot/disable", headers=api.admin)).is_success
        reason = "the agent is disabled"
    else:
        await api.revoke("task", "T-1")
        reason = "the task is revoked"
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    ssh = await api.call(agent, "/v1/certificates/ssh", {"public_key": public, "principals": ["d"]})
    await api.refused(ssh, 401, "invalid_token", reason)
    tls = await api.call(agent, "/v1/certificates/x509", {"csr": csr_pem(), "bind_token": True})
    await api.refused(tls, 401, "invalid_token", reason)
    assert [e["action"]["issued"] for e in await api.events("token.issued")] == ["access_token"]


# --- users who delegated ----------------------------------------------------------------------


async def test_a_disabled_user_delegates_nothing_and_their_tokens_end(api: Api) -> None:
    await api.users.add("alice", password=None, groups=["finance"])
    agent = await api.joined()
    form = delegate_form(api.stack.user_token("alice"), agent.token, "T-1")
    answer = await api.token(agent, form, ath=agent.token)
    assert answer.status_code == 200, answer.text
    delegated = Agent("bot", key=agent.key, token=answer.json()["access_token"])
    assert (await api.call(delegated, "/v1/whoami")).json()["sub"] == "alice"

    disabled = await api.http.post("/v1/users/alice/disable", headers=api.admin)
    assert disabled.status_code == 200, disabled.text
    await api.refused(
        await api.call(delegated, "/v1/whoami"), 401, "invalid_token", "the token is revoked"
    )
    rescope = rescope_form(delegated.token, "T-1")
    refused = await api.token(delegated, rescope, ath=delegated.token)
    await api.refused(refused, 401, "invalid_token", "the token is revoked")
    form = delegate_form(api.stack.user_token("alice"), agent.token, "T-1")
    refused = await api.token(agent, form, ath=agent.token)
    await api.refused(refused, 400, "invalid_grant", "the user is disabled")
    assert (await api.call(agent, "/v1/whoami")).status_code == 200  # the agent's own token

    form = delegate_form(api.stack.user_token("bob"), agent.token, "T-1")
    assert (await api.token(agent, form, ath=agent.token)).status_code == 200  # not a user here
    enabled = await api.http.post("/v1/users/alice/enable", headers=api.admin)
    assert enabled.status_code == 200, enabled.text
    form = delegate_form(api.stack.user_token("alice"), agent.token, "T-1")
    assert (await api.token(agent, form, ath=agent.token)).status_code == 200
    refused = await api.call(delegated, "/v1/whoami")  # revoked for good
    await api.refused(refused, 401, "invalid_token", "the token is revoked")


async def test_nothing_delegated_by_a_disabled_user_is_recorded(api: Api) -> None:
    """What closes the race with a disabling: the store refuses the credential itself."""
    await api.users.add("alice", password=None)
    agent = await api.joined()
    form = delegate_form(api.stack.user_token("alice"), agent.token, "T-1")
    answer = await api.token(agent, form, ath=agent.token)
    claims = api.stack.service.verifier.verify(answer.json()["access_token"])
    await api.users.disable("alice", by="test")
    record = credential_record(claims, "access_token", key_thumbprint=claims.cnf.jkt)
    with pytest.raises(TokenRevoked, match="the user is disabled"):
        await api.stack.service.record_credential(dataclasses.replace(record, jti="another"))


async def test_an_exchange_the_store_fails_is_refused_and_audited(api: Api) -> None:
    """The store fails while a renewal is recorded (its table renamed away): nothing is
    issued, the agent gets an RFC 6749 ``server_error`` (500) and the refusal is in the
    trail (was: an unaudited 500 from the server's last resort)."""
    agent = await api.joined()
    async with api.stack.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE credentials RENAME TO credentials_away")
    refused = await api.token(agent, rescope_form(agent.token, "T-1"), ath=agent.token)
    async with api.stack.engine.begin() as conn:
        await conn.exec_driver_sql("ALTER TABLE credentials_away RENAME TO credentials")
    assert "no such table" not in refused.text and "credentials" not in refused.text
    assert refused.json()["detail"] == "internal error; see the server log"
    event = (await api.events("token.refused"))[-1]
    assert (refused.status_code, refused.json()["error"]) == (500, "server_error")
    assert (event["decision"], event["reason"]) == ("deny", "internal error (OperationalError)")
    assert (event["detail"]["error"], event["detail"]["status"]) == ("server_error", 500)
    assert len(await api.events("token.issued")) == 1  # the join's only
    renewed = await api.token(agent, rescope_form(agent.token, "T-1"), ath=agent.token)
    assert renewed.status_code == 200, renewed.text  # the store is back
