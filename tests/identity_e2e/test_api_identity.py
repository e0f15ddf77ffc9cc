"""The identity HTTP API through httpx's ASGI transport over a real (SQLite) store.

Token endpoint, agent endpoints (DPoP), admin endpoints (admin token, audit records), and
every refusal as RFC 9457 problem details, never a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
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

from tests.identity_e2e.conftest import TOKEN_URL, Agent, Clock, Stack, build_service, join_form
from tether.api import AppState, PolicyHolder, create_app
from tether.api.adminauth import AUDIT_LOGGER
from tether.api.oauth import AUDIT_LOGGER as CREDENTIAL_AUDIT
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.admintokens import create_admin_token
from tether.identity.sshca import describe_certificate
from tether.policy import PolicySource, load_policies
from tether.store import Store

POLICY = (
    "rules:\n  - id: r\n    effect: allow\n    agents: [bot]\n    targets: [t]\n"
    "    mcp: {tools: [x]}\n"
)
PROBLEM = "application/problem+json"


@dataclass
class Api:
    stack: Stack
    http: httpx.AsyncClient
    admin: dict[str, str]

    async def agent(self, agent_id: str = "bot", **extra: str) -> Agent:
        """An agent created through the API, joined through the token endpoint."""
        created = await self.http.post(
            "/v1/agents", json={"id": agent_id, "owner": "alice"}, headers=self.admin
        )
        assert created.status_code == 201, created.text
        minted = await self.http.post(f"/v1/agents/{agent_id}/join-tokens", headers=self.admin)
        agent = Agent(agent_id)
        answer = await self.token(agent, join_form(minted.json()["join_token"], **extra))
        assert answer.status_code == 200, answer.text
        agent.token = answer.json()["access_token"]
        return agent

    async def token(
        self, agent: Agent, form: dict[str, str], *, ath: str | None = None
    ) -> httpx.Response:
        proof = self.stack.proof(agent, "POST", TOKEN_URL, token=ath)
        return await self.http.post("/oauth/token", data=form, headers={"DPoP": proof})

    async def call(
        self, agent: Agent, method: str, path: str, *, proof_url: str | None = None, **kw: Any
    ) -> httpx.Response:
        url = proof_url or f"http://tether{path.split('?')[0]}"
        proof = self.stack.proof(agent, method, url, token=agent.token)
        headers = {"Authorization": f"DPoP {agent.token}", "DPoP": proof, **kw.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kw)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async for served in serving_api(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}"):
        yield served


async def serving_api(store_url: str) -> AsyncIterator[Api]:
    """The node's API over the store at ``store_url`` (httpx's ASGI transport), with an
    admin token; the store closed after."""
    store = await Store.open(store_url)
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    service = await build_service(store, clock, cipher)
    stack = Stack(store, clock, cipher, service)
    holder = PolicyHolder(load_policies([PolicySource("a.yaml", POLICY)]))
    app = create_app(AppState(holder, store, service))
    token, _ = await create_admin_token(store.engine, cipher.sealer, name="test", now=clock())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
            yield Api(stack, http, {"Authorization": f"Bearer {token}"})
    finally:
        await store.close()


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["type"] == "about:blank"
    assert "Traceback" not in response.text
    return body


def oauth_problem(response: httpx.Response, status: int, error: str) -> dict[str, Any]:
    body = problem(response, status)
    assert body["error"] == error
    assert body["error_description"] == body["detail"]
    assert response.headers["cache-control"] == "no-store"
    return body


# --- JWKS and the token endpoint --------------------------------------------------------------


async def test_jwks_publishes_public_keys_only(api: Api) -> None:
    answer = await api.http.get("/.well-known/jwks.json")
    keys = answer.json()["keys"]
    assert [k["kid"] for k in keys] == [api.stack.service.keys.ring.active.kid]
    assert all("d" not in k and k["alg"] == "EdDSA" for k in keys)


async def test_join_then_whoami(api: Api) -> None:
    agent = await api.agent()
    answer = await api.call(agent, "GET", "/v1/whoami?verbose=1")
    assert answer.status_code == 200, answer.text
    assert (answer.json()["sub"], answer.json()["agent_id"]) == ("bot", "bot")


async def test_token_response_shape(api: Api) -> None:
    await api.http.post("/v1/agents", json={"id": "bot", "owner": "a"}, headers=api.admin)
    minted = await api.http.post("/v1/agents/bot/join-tokens", json={}, headers=api.admin)
    answer = await api.token(Agent("bot"), join_form(minted.json()["join_token"], scope="db-*"))
    body = answer.json()
    assert answer.headers["cache-control"] == "no-store"
    assert (body["token_type"], body["expires_in"], body["scope"]) == ("DPoP", 600, "db-*")
    assert body["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"


@pytest.mark.parametrize(
    ("content", "headers", "error"),
    [
        ('{"grant_type": "x"}', {"content-type": "application/json"}, "invalid_request"),
        ("grant_type=a&grant_type=b", {}, "invalid_request"),
        ("%zz=&&", {}, "invalid_request"),
        ("grant_type=password&username=a", {}, "invalid_request"),
        ("grant_type=client_credentials", {}, "unsupported_grant_type"),
        ("grant_type=urn:ietf:params:oauth:grant-type:token-exchange", {}, "invalid_request"),
    ],
)
async def test_malformed_token_requests(
    api: Api, content: str, headers: dict[str, str], error: str
) -> None:
    headers = {"content-type": "application/x-www-form-urlencoded", **headers}
    answer = await api.http.post("/oauth/token", content=content, headers=headers)
    oauth_problem(answer, 400, error)


async def test_token_request_without_or_with_two_dpop_proofs(api: Api) -> None:
    await api.http.post("/v1/agents", json={"id": "bot", "owner": "a"}, headers=api.admin)
    minted = await api.http.post("/v1/agents/bot/join-tokens", headers=api.admin)
    form = join_form(minted.json()["join_token"])
    answer = await api.http.post("/oauth/token", data=form)
    assert oauth_problem(answer, 400, "invalid_dpop_proof")["detail"] == "missing DPoP proof"
    agent = Agent("bot")
    proofs = [("DPoP", api.stack.proof(agent, "POST", TOKEN_URL)) for _ in range(2)]
    answer = await api.http.post("/oauth/token", data=form, headers=proofs)
    assert oauth_problem(answer, 400, "invalid_dpop_proof")["detail"] == (
        "more than one DPoP header"
    )
    assert (await api.token(agent, form)).status_code == 200  # the token was not spent


async def test_replayed_join_token_is_an_oauth_problem(api: Api) -> None:
    await api.http.post("/v1/agents", json={"id": "bot", "owner": "a"}, headers=api.admin)
    minted = await api.http.post("/v1/agents/bot/join-tokens", headers=api.admin)
    form = join_form(minted.json()["join_token"])
    assert (await api.token(Agent("bot"), form)).status_code == 200
    oauth_problem(await api.token(Agent("bot"), form), 400, "invalid_grant")


async def test_expired_subject_token_is_401_with_a_dpop_challenge(api: Api) -> None:
    agent = await api.agent()
    api.stack.clock.advance(700)
    form = {
        **join_form(agent.token, "T-2"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
    }
    answer = await api.token(agent, form, ath=agent.token)
    oauth_problem(answer, 401, "invalid_token")
    challenge = answer.headers["www-authenticate"]
    assert challenge.startswith('DPoP error="invalid_token"')
    assert 'algs="ES256 EdDSA"' in challenge


# --- agent endpoints --------------------------------------------------------------------------


async def test_whoami_without_credentials(api: Api) -> None:
    answer = await api.http.get("/v1/whoami")
    problem(answer, 401)
    assert answer.headers["www-authenticate"] == 'DPoP algs="ES256 EdDSA"'


async def test_whoami_with_bearer_scheme(api: Api) -> None:
    agent = await api.agent()
    answer = await api.http.get("/v1/whoami", headers={"Authorization": f"Bearer {agent.token}"})
    assert problem(answer, 401)["error"] == "invalid_token"


@pytest.mark.parametrize(
    ("proof_url", "reason"),
    [
        ("http://tether/v1/agents", "htu does not match the request URI"),
        ("http://127.0.0.1:8765/v1/whoami", "htu does not match the request URI"),
    ],
)
async def test_whoami_proof_for_another_url(api: Api, proof_url: str, reason: str) -> None:
    agent = await api.agent()
    answer = await api.call(agent, "GET", "/v1/whoami", proof_url=proof_url)
    body = problem(answer, 401)
    assert (body["error"], body["detail"]) == ("invalid_dpop_proof", reason)
    assert answer.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')


async def test_whoami_with_two_dpop_headers(api: Api) -> None:
    agent = await api.agent()
    proofs = [api.stack.proof(agent, token=agent.token) for _ in range(2)]
    headers = [("Authorization", f"DPoP {agent.token}"), ("DPoP", proofs[0]), ("DPoP", proofs[1])]
    answer = await api.http.get("/v1/whoami", headers=headers)
    assert problem(answer, 401)["error"] == "invalid_dpop_proof"


async def test_revoked_task_refused_with_its_reason(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await api.agent()
    assert (await api.call(agent, "GET", "/v1/whoami")).status_code == 200
    revoked = await api.http.post(
        "/v1/revocations",
        json={"kind": "task", "value": "T-1", "reason": "incident"},
        headers=api.admin,
    )
    assert (revoked.status_code, revoked.json()["created"]) == (201, True)
    with caplog.at_level(logging.INFO, logger=CREDENTIAL_AUDIT):
        answer = await api.call(agent, "GET", "/v1/whoami")
    assert problem(answer, 401)["detail"] == "the task is revoked"
    assert 'error_description="the task is revoked"' in answer.headers["www-authenticate"]
    records = [r.audit for r in caplog.records if hasattr(r, "audit")]
    assert records == [
        {"event": "credential.refused", "endpoint": "GET /v1/whoami", "peer": "127.0.0.1",
         "error": "invalid_token", "reason": "the task is revoked", "status": 401}
    ]  # fmt: skip


async def test_ssh_certificate_from_the_callers_address(api: Api) -> None:
    agent = await api.agent()
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    body = {"public_key": public, "principals": ["deploy"]}
    answer = await api.call(agent, "POST", "/v1/certificates/ssh", json=body)
    info = describe_certificate(answer.json()["certificate"])
    assert info.critical_options == {"source-address": "127.0.0.1/32"}
    assert info.key_id.startswith("agent=bot task=T-1 jti=")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"public_key": "ssh-ed25519 AAAA", "principals": ["deploy"]}, 400),
        ({"public_key": "x", "principals": ["-oProxyCommand=x"]}, 400),
        ({"public_key": "x", "principals": []}, 422),
        ({"public_key": "x", "principals": ["a"], "extensions": ["permit-pty"]}, 422),
    ],
)
async def test_bad_ssh_certificate_requests(api: Api, body: dict[str, Any], status: int) -> None:
    agent = await api.agent()
    problem(await api.call(agent, "POST", "/v1/certificates/ssh", json=body), status)


async def test_x509_certificate(api: Api) -> None:
    agent = await api.agent()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    answer = await api.call(
        agent,
        "POST",
        "/v1/certificates/x509",
        json={"csr": csr.public_bytes(Encoding.PEM).decode()},
    )
    cert = x509.load_pem_x509_certificate(answer.json()["certificate"].encode())
    ca = x509.load_pem_x509_certificate(answer.json()["ca"].encode())
    cert.verify_directly_issued_by(ca)
    assert "access_token" not in answer.json()
    bad = await api.call(agent, "POST", "/v1/certificates/x509", json={"csr": "not a csr"})
    problem(bad, 400)


async def test_x509_certificate_with_a_bound_token(api: Api) -> None:
    agent = await api.agent()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    answer = await api.call(
        agent,
        "POST",
        "/v1/certificates/x509",
        json={"csr": csr.public_bytes(Encoding.PEM).decode(), "bind_token": True},
    )
    assert answer.status_code == 200, answer.text
    bound = answer.json()["access_token"]
    assert bound["token_type"] == "Bearer"
    payload = bound["access_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    cert = x509.load_pem_x509_certificate(answer.json()["certificate"].encode())
    digest = hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()
    expected = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert claims["cnf"] == {"x5t#S256": expected}


# --- admin endpoints --------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "Bearer tat_0.nope", "Basic YWRtaW46eA=="])
async def test_admin_calls_need_a_valid_admin_token(
    api: Api, authorization: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        answer = await api.http.post("/v1/agents", json={"id": "x", "owner": "y"}, headers=headers)
    problem(answer, 401)
    assert answer.headers["www-authenticate"] == 'Bearer realm="tether-admin"'
    records = [r.audit for r in caplog.records if hasattr(r, "audit")]
    assert [(r["actor"], r["action"], r["outcome"]) for r in records] == [
        ("anonymous", "agent.create", "denied")
    ]


async def test_expired_and_revoked_admin_tokens(api: Api) -> None:
    engine, clock = api.stack.engine, api.stack.clock
    short, _ = await create_admin_token(
        engine, api.stack.cipher.sealer, name="short", now=clock(), ttl=60
    )
    assert (
        await api.http.get("/v1/agents", headers={"Authorization": f"Bearer {short}"})
    ).is_success
    clock.advance(61)
    problem(await api.http.get("/v1/agents", headers={"Authorization": f"Bearer {short}"}), 401)
    revoked, record = await create_admin_token(
        engine, api.stack.cipher.sealer, name="gone", now=clock()
    )
    from tether.store import keys as key_store

    async with engine.begin() as conn:
        await key_store.revoke_admin_token(conn, api.stack.cipher.sealer, record.id, clock())
    problem(await api.http.get("/v1/agents", headers={"Authorization": f"Bearer {revoked}"}), 401)


async def test_agent_lifecycle_is_audited(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        agent = await api.agent("bot")
        problem(
            await api.http.post("/v1/agents", json={"id": "bot", "owner": "b"}, headers=api.admin),
            409,
        )
        shown = await api.http.get("/v1/agents/bot", headers=api.admin)
        disabled = await api.http.post("/v1/agents/bot/disable", headers=api.admin)
        refused = await api.call(agent, "GET", "/v1/whoami")
        enabled = await api.http.post("/v1/agents/bot/enable", headers=api.admin)
        back = await api.call(agent, "GET", "/v1/whoami")
        gone = await api.http.post(
            "/v1/agents/bot/offboard", json={"reason": "left"}, headers=api.admin
        )
        after = await api.call(agent, "GET", "/v1/whoami")
        again = await api.http.post("/v1/agents/bot/enable", headers=api.admin)
        minted = await api.http.post("/v1/agents/bot/join-tokens", headers=api.admin)
    assert [r["kind"] for r in shown.json()["credentials"]] == ["access_token"]
    assert shown.json()["runtimes"][0]["address"] == "127.0.0.1"
    assert disabled.json()["state"] == "disabled"
    assert problem(refused, 401)["detail"] == "the agent is disabled"
    assert (enabled.json()["state"], back.status_code) == ("active", 200)
    assert gone.json()["state"] == "offboarded"
    assert problem(after, 401)["detail"] == "the agent is revoked"
    problem(again, 409)
    problem(minted, 409)
    records = [r.audit for r in caplog.records if hasattr(r, "audit")]
    assert [(r["action"], r["target"], r["outcome"]) for r in records] == [
        ("agent.create", "agent:bot", "success"),
        ("agent.join-token", "agent:bot", "success"),
        ("agent.create", "agent:bot", "refused"),
        ("agent.show", "agent:bot", "success"),
        ("agent.disable", "agent:bot", "success"),
        ("agent.enable", "agent:bot", "success"),
        ("agent.offboard", "agent:bot", "success"),
        ("agent.enable", "agent:bot", "refused"),
        ("agent.join-token", "agent:bot", "refused"),
    ]
    assert all(r["actor"].startswith("admin-token:") for r in records)
    assert records[2]["status"] == 409
    assert "tjt_" not in caplog.text  # the join token itself is never logged


@pytest.mark.parametrize(
    "body",
    [
        {"id": "bad id", "owner": "a"},
        {"id": "-lead", "owner": "a"},
        {"id": "ok", "owner": ""},
        {"id": "ok", "owner": "a", "role": "admin"},
        {"id": "ok", "owner": "a", "labels": {"k": 3}},
        [],
    ],
)
async def test_malformed_admin_bodies(
    api: Api, body: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        answer = await api.http.post("/v1/agents", json=body, headers=api.admin)
    problem(answer, 422)
    records = [r.audit for r in caplog.records if hasattr(r, "audit")]
    assert [(r["outcome"], r["status"]) for r in records] == [("refused", 422)]


@pytest.mark.parametrize(("content", "status"), [(b"\xff{", 422), (b"{", 422), (b"[]", 422)])
async def test_not_json_at_all(
    api: Api, content: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    headers = {**api.admin, "content-type": "application/json"}
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER):
        answer = await api.http.post("/v1/agents", content=content, headers=headers)
    problem(answer, status)
    records = [r.audit for r in caplog.records if hasattr(r, "audit")]
    assert [(r["outcome"], r["status"]) for r in records] == [("refused", status)]
    anonymous = await api.http.post("/v1/agents", content=content, headers={})
    problem(anonymous, 401)  # authentication comes before the body


async def test_list_filters_and_unknown_agents(api: Api) -> None:
    for agent_id, owner in (("a1", "alice"), ("b1", "bob"), ("b2", "bob")):
        await api.http.post("/v1/agents", json={"id": agent_id, "owner": owner}, headers=api.admin)
    await api.http.post("/v1/agents/b2/disable", headers=api.admin)
    listed = await api.http.get("/v1/agents", params={"owner": "bob"}, headers=api.admin)
    assert [a["id"] for a in listed.json()["agents"]] == ["b1", "b2"]
    active = await api.http.get("/v1/agents", params={"state": "active"}, headers=api.admin)
    assert [a["id"] for a in active.json()["agents"]] == ["a1", "b1"]
    problem(await api.http.get("/v1/agents", params={"state": "zombie"}, headers=api.admin), 422)
    for path in (
        "/v1/agents/nope",
        "/v1/agents/nope/disable",
        "/v1/agents/nope/join-tokens",
        "/v1/agents/nope/offboard",
    ):
        method = "GET" if path == "/v1/agents/nope" else "POST"
        problem(await api.http.request(method, path, headers=api.admin), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "user", "value": "x", "reason": "r"},
        {"kind": "task", "value": "", "reason": "r"},
        {"kind": "task", "value": "x"},
    ],
)
async def test_malformed_revocations(api: Api, body: dict[str, Any]) -> None:
    problem(await api.http.post("/v1/revocations", json=body, headers=api.admin), 422)


async def test_join_token_ttl_bounds(api: Api) -> None:
    await api.http.post("/v1/agents", json={"id": "bot", "owner": "a"}, headers=api.admin)
    for ttl in (0, 86401, "soon"):
        answer = await api.http.post(
            "/v1/agents/bot/join-tokens", json={"ttl": ttl}, headers=api.admin
        )
        problem(answer, 422)


async def test_key_rotation_through_the_api(api: Api) -> None:
    agent = await api.agent()
    rotated = await api.http.post("/v1/keys/rotate", headers=api.admin)
    kid = rotated.json()["kid"]
    jwks = (await api.http.get("/.well-known/jwks.json")).json()["keys"]
    assert jwks[0]["kid"] == kid and len(jwks) == 2
    assert (await api.call(agent, "GET", "/v1/whoami")).status_code == 200
    fresh = await api.agent("other")
    assert fresh.token.split(".")[0] != agent.token.split(".")[0]
