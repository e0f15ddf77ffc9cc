"""The API's audit events, through the real ASGI app over a real SQLite store and trail.

Admin calls (``admin.change``), the token endpoint and the certificate endpoints
(``token.issued`` / ``token.refused``) and ``/v1/decide`` (``decision``) each land in the
hash-chained trail with the right fields, before their answer; no token, proof, join
token, admin token or certificate text is ever in the trail; and when the trail cannot
commit, the answer is withheld (503) instead of being given unaudited.
"""

from __future__ import annotations

import base64
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

from tests.identity_e2e.conftest import TOKEN_URL, Agent, Clock, Stack, build_service, join_form
from tether.api import AppState, PolicyHolder, create_app
from tether.audit.emit import Auditor
from tether.audit.log import AuditLog
from tether.audit.verify import verify_trail
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.admintokens import create_admin_token
from tether.identity.sshca import describe_certificate
from tether.policy import PolicySource, load_policies
from tether.store import Store

POLICY = """\
rules:
  - id: billing-read
    effect: allow
    agents: [bot]
    targets: [billing-api]
    http: {methods: [GET], paths: ["/v1/invoices/**"]}
"""


@dataclass
class Api:
    stack: Stack
    http: httpx.AsyncClient
    log: AuditLog
    admin_token: str
    admin_id: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Every stored event (of ``kind``), ``action`` and ``detail`` decoded."""
        async with self.stack.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM audit_events ORDER BY seq"))).mappings()
            found = [dict(row) for row in rows]
        for row in found:
            row["action"], row["detail"] = json.loads(row["action"]), json.loads(row["detail"])
        return [row for row in found if kind is None or row["kind"] == kind]

    async def raw_trail(self) -> str:
        """The whole trail as stored, every column of every row: what a secret must not be in."""
        async with self.stack.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT * FROM audit_events"))).all()
        return "\n".join(repr(tuple(row)) for row in rows)

    async def joined(self, agent_id: str = "bot") -> tuple[Agent, str, dict[str, Any]]:
        """An agent created and joined through the API: it, its join token and the answer."""
        created = await self.http.post(
            "/v1/agents", json={"id": agent_id, "owner": "alice"}, headers=self.admin
        )
        assert created.status_code == 201, created.text
        minted = await self.http.post(f"/v1/agents/{agent_id}/join-tokens", headers=self.admin)
        join_token = minted.json()["join_token"]
        agent = Agent(agent_id)
        answer = await self.token(agent, join_form(join_token))
        assert answer.status_code == 200, answer.text
        agent.token = answer.json()["access_token"]
        return agent, join_token, answer.json()

    async def token(self, agent: Agent, form: dict[str, str]) -> httpx.Response:
        proof = self.stack.proof(agent, "POST", TOKEN_URL)
        return await self.http.post("/oauth/token", data=form, headers={"DPoP": proof})

    async def call(self, agent: Agent, method: str, path: str, **kw: Any) -> httpx.Response:
        proof = self.stack.proof(agent, method, f"http://tether{path}", token=agent.token)
        headers = {"Authorization": f"DPoP {agent.token}", "DPoP": proof}
        return await self.http.request(method, path, headers=headers, **kw)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    service = await build_service(store, clock, cipher)
    log = AuditLog(store.engine, lambda: service.keys.ring.active, checkpoint_every=7)
    await log.start()
    holder = PolicyHolder(load_policies([PolicySource("a.yaml", POLICY)]))
    app = create_app(AppState(holder, store, service, Auditor(log)))
    token, record = await create_admin_token(store.engine, cipher.sealer, name="test", now=clock())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
            yield Api(Stack(store, clock, cipher, service), http, log, token, record.id)
    finally:
        await log.close()
        await store.close()


async def assert_chain_verifies(api: Api) -> None:
    await api.log.checkpoint()
    async with api.stack.engine.connect() as conn:
        report = await verify_trail(conn)
    assert report.ok, report.findings
    assert report.unanchored == 0


# --- admin calls ---------------------------------------------------------------------------


async def test_every_admin_call_is_an_admin_change_event(api: Api) -> None:
    actor = f"admin-token:{api.admin_id}"
    _, join_token, issued = await api.joined("bot")
    duplicate = await api.http.post(
        "/v1/agents", json={"id": "bot", "owner": "x"}, headers=api.admin
    )
    assert duplicate.status_code == 409
    for verb in ("disable", "enable"):
        assert (await api.http.post(f"/v1/agents/bot/{verb}", headers=api.admin)).is_success
    revoked = await api.http.post(
        "/v1/revocations",
        json={"kind": "task", "value": "T-9", "reason": "done"},
        headers=api.admin,
    )
    assert revoked.status_code == 201
    rotated = await api.http.post("/v1/keys/rotate", headers=api.admin)
    kid = rotated.json()["kid"]
    offboarded = await api.http.post(
        "/v1/agents/bot/offboard", json={"reason": "left"}, headers=api.admin
    )
    assert offboarded.is_success
    malformed = await api.http.post("/v1/agents", json={"id": "bad id"}, headers=api.admin)
    assert malformed.status_code == 422
    verified = await api.http.get("/v1/audit/verify", headers=api.admin)
    assert verified.json()["ok"] is True

    events = await api.events("admin.change")
    seen = [(e["action"]["name"], e["target"], e["action"]["outcome"]) for e in events]
    assert seen == [
        ("agent.create", "agent:bot", "success"),
        ("agent.join-token", "agent:bot", "success"),
        ("agent.create", "agent:bot", "refused"),
        ("agent.disable", "agent:bot", "success"),
        ("agent.enable", "agent:bot", "success"),
        ("revoke", "task:T-9", "success"),
        ("keys.rotate", "access-token-key", "success"),
        ("agent.offboard", "agent:bot", "success"),
        ("agent.create", None, "refused"),
        ("audit.verify", "audit-trail", "success"),
    ]
    for event in events:
        assert event["user"] == actor
        assert event["source_ip"] == "127.0.0.1"
        assert event["reason"] == event["action"]["outcome"]
        expected = "allow" if event["action"]["outcome"] == "success" else "deny"
        assert event["decision"] == expected
    by_name = {e["action"]["name"]: e for e in events}
    assert by_name["revoke"]["detail"]["reason"] == "done"
    assert by_name["keys.rotate"]["detail"]["kid"] == kid
    assert by_name["agent.offboard"]["detail"]["reason"] == "left"
    assert (events[2]["detail"]["status"], events[8]["detail"]["status"]) == (409, 422)
    join_id = join_token.removeprefix("tjt_").split(".")[0]
    assert events[1]["detail"]["join_id"] == join_id
    assert events[1]["detail"]["path"] == "/v1/agents/bot/join-tokens"
    trail = await api.raw_trail()
    for secret in (join_token, join_token.split(".")[1], api.admin_token, issued["access_token"]):
        assert secret not in trail
    await assert_chain_verifies(api)


@pytest.mark.parametrize(
    ("authorization", "claimed"),
    [(None, None), ("Bearer tat_5eed5eed5eed.c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw", "5eed5eed5eed"),
     ("Basic YWRtaW46aHVudGVyMg==", None)],
)  # fmt: skip
async def test_refused_admin_logins_are_denied_events(
    api: Api, authorization: str | None, claimed: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    answer = await api.http.post("/v1/agents", json={"id": "x", "owner": "y"}, headers=headers)
    assert answer.status_code == 401
    (event,) = await api.events("admin.change")
    assert (event["user"], event["action"], event["target"]) == (
        "anonymous",
        {"name": "agent.create", "outcome": "denied"},
        "/v1/agents",
    )
    assert (event["decision"], event["source_ip"]) == ("deny", "127.0.0.1")
    assert event["detail"]["status"] == 401
    assert event["detail"].get("presented_id") == claimed
    trail = await api.raw_trail()
    for secret in ("c2VjcmV0LXRoYXQtbXVzdC1ub3QtbGVhaw", "YWRtaW46aHVudGVyMg=="):
        assert secret not in trail
    async with api.stack.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM agents"))).scalar_one() == 0


# --- tokens and certificates -----------------------------------------------------------------


def payload(token: str) -> dict[str, Any]:
    """The claims of a JWS, unverified (the test only reads what was issued)."""
    part = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return claims


async def test_token_issued_and_refused(api: Api) -> None:
    agent, join_token, issued = await api.joined("bot")
    again = await api.token(agent, join_form(join_token, "T-2"))
    assert again.status_code == 400
    not_a_form = await api.http.post("/oauth/token", json={"subject_token": join_token})
    assert not_a_form.status_code == 400

    (event,) = await api.events("token.issued")
    claims = payload(issued["access_token"])
    assert (event["agent"], event["task"], event["runtime"]) == (
        "bot",
        "T-1",
        claims["runtime"]["id"],
    )
    assert (event["decision"], event["target"], event["source_ip"]) == (
        "allow",
        "tether",
        "127.0.0.1",
    )
    assert event["action"]["jti"] == claims["jti"]
    assert event["action"]["issued"] == "access_token"
    assert event["action"]["scope"] == ["*"]
    assert event["action"]["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"
    assert event["action"]["expires_at"].startswith("2026-11-29T12:10:00")
    assert event["detail"]["binding"] == "DPoP"

    reused, wrong_type = await api.events("token.refused")
    assert (reused["decision"], reused["source_ip"]) == ("deny", "127.0.0.1")
    assert reused["reason"] == "the join token is unknown, used, expired or its agent inactive"
    assert reused["detail"]["error"] == "invalid_grant"
    assert reused["detail"]["join_id"] == join_token.removeprefix("tjt_").split(".")[0]
    assert reused["detail"]["endpoint"] == "POST /oauth/token"
    assert wrong_type["detail"]["error"] == "invalid_request"
    assert wrong_type["detail"]["status"] == 400

    trail = await api.raw_trail()
    assert join_token.split(".")[1] not in trail
    assert issued["access_token"] not in trail
    assert issued["access_token"].split(".")[2] not in trail
    await assert_chain_verifies(api)


async def test_certificates_issued_and_refused(api: Api) -> None:
    agent, _, _ = await api.joined("bot")
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    ssh = await api.call(
        agent, "POST", "/v1/certificates/ssh", json={"public_key": public, "principals": ["deploy"]}
    )
    assert ssh.status_code == 200, ssh.text
    serial = describe_certificate(ssh.json()["certificate"]).serial
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    body = {"csr": csr.public_bytes(Encoding.PEM).decode(), "bind_token": True}
    tls = await api.call(agent, "POST", "/v1/certificates/x509", json=body)
    assert tls.status_code == 200, tls.text
    cert = x509.load_pem_x509_certificate(tls.json()["certificate"].encode())
    bad = await api.call(agent, "POST", "/v1/certificates/x509", json={"csr": "not a csr"})
    assert bad.status_code == 400
    anonymous = await api.http.get("/v1/whoami")
    assert anonymous.status_code == 401

    _, ssh_event, x509_event, bound_event = await api.events("token.issued")
    assert ssh_event["action"]["jti"] == f"ssh_certificate:{serial}"
    assert ssh_event["action"]["issued"] == "ssh_certificate"
    assert ssh_event["detail"]["principals"] == ["deploy"]
    assert ssh_event["detail"]["source_address"] == "127.0.0.1/32"
    assert x509_event["action"]["jti"] == f"x509_certificate:{cert.serial_number:x}"
    assert bound_event["action"]["issued"] == "access_token"
    assert bound_event["detail"]["bound_to"] == x509_event["action"]["jti"]
    for event in (ssh_event, x509_event, bound_event):
        assert (event["agent"], event["task"]) == ("bot", "T-1")
    refused_csr, no_token = await api.events("token.refused")
    assert (refused_csr["agent"], refused_csr["detail"]["error"]) == ("bot", "certificate_refused")
    assert refused_csr["detail"]["endpoint"] == "POST /v1/certificates/x509"
    assert (no_token["agent"], no_token["detail"]["error"]) == (None, "missing_token")

    trail = await api.raw_trail()
    assert "BEGIN CERTIFICATE" not in trail
    assert ssh.json()["certificate"].split()[1] not in trail
    assert tls.json()["access_token"]["access_token"] not in trail
    assert agent.token not in trail
    await assert_chain_verifies(api)


# --- decisions ---------------------------------------------------------------------------------


def decide_body(path: str, **extra: Any) -> dict[str, Any]:
    return {
        "agent": {"id": "bot"},
        "runtime": {"id": "k8s/prod/b-1"},
        "task": {"id": "T-118"},
        "target": {"name": "billing-api", "labels": {"env": "prod"}},
        "action": {"http": {"method": "GET", "path": path, "headers": {
            "authorization": "Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2ln",
            "x-api-key": "k-12345-secret"}}},
        "source_ip": "10.1.2.3",
        **extra,
    }  # fmt: skip


async def test_every_decision_is_an_event(api: Api) -> None:
    allowed = await api.http.post("/v1/decide", json=decide_body("/v1/invoices/7"))
    denied = await api.http.post("/v1/decide", json=decide_body("/v1/admin"))
    invalid = await api.http.post("/v1/decide", json=["not", "a", "request"])
    assert [r.json()["decision"] for r in (allowed, denied, invalid)] == ["allow", "deny", "deny"]

    first, second, third = await api.events("decision")
    version = allowed.json()["policy_version"]
    assert (first["decision"], first["rule"], first["policy_version"]) == (
        "allow",
        "billing-read",
        version,
    )
    assert (first["agent"], first["runtime"], first["task"]) == ("bot", "k8s/prod/b-1", "T-118")
    assert (first["target"], first["source_ip"]) == ("billing-api", "10.1.2.3")
    assert first["duration_ms"] >= 0
    headers = first["action"]["http"]["headers"]
    assert headers == {"authorization": "[REDACTED]", "x-api-key": "[REDACTED]"}
    assert first["action"]["http"]["path"] == "/v1/invoices/7"
    assert (second["decision"], second["reason"]) == ("deny", denied.json()["reason"])
    assert (third["decision"], third["reason"]) == ("deny", invalid.json()["reason"])
    trail = await api.raw_trail()
    assert "eyJhbGciOiJFZERTQSJ9" not in trail and "k-12345-secret" not in trail
    await assert_chain_verifies(api)


# --- failing closed ----------------------------------------------------------------------------


async def test_without_a_trail_nothing_is_answered_unaudited(api: Api) -> None:
    agent, _, _ = await api.joined("bot")
    await api.log.close()
    decided = await api.http.post("/v1/decide", json=decide_body("/v1/invoices/7"))
    assert decided.status_code == 503
    assert "decision" not in decided.json()
    created = await api.http.post(
        "/v1/agents", json={"id": "bot2", "owner": "alice"}, headers=api.admin
    )
    assert created.status_code == 503 and "withheld" in created.json()["detail"]
    minted = await api.http.post("/v1/agents/bot/join-tokens", headers=api.admin)
    assert minted.status_code == 503 and "tjt_" not in minted.text
    public = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    ssh = await api.call(
        agent, "POST", "/v1/certificates/ssh", json={"public_key": public, "principals": ["x"]}
    )
    assert ssh.status_code == 503 and "certificate" not in ssh.json()
    refused = await api.http.get("/v1/agents")  # a refusal stays a refusal
    assert refused.status_code == 401


async def test_following_the_trail_does_not_feed_on_its_own_events(api: Api) -> None:
    async def poll(**params: Any) -> dict[str, Any]:
        answer = await api.http.get("/v1/audit/events", params=params, headers=api.admin)
        assert answer.status_code == 200, answer.text
        page: dict[str, Any] = answer.json()
        return page

    async def searches() -> int:
        events = await api.events("admin.change")
        return sum(e["action"]["name"] == "audit.search" for e in events)

    await api.http.post("/v1/decide", json=decide_body("/v1/invoices/1"))
    first = await poll(limit=5)  # a search: audited
    assert await searches() == 1
    cursor = first["last_seq"]
    for _ in range(3):  # follow polls that only see the searches' own events: not audited
        page = await poll(after_seq=cursor)
        assert all(e["kind"] == "admin.change" for e in page["events"])
        cursor = page["last_seq"]
    assert await searches() == 1
    await api.http.post("/v1/decide", json=decide_body("/v1/invoices/2"))
    page = await poll(after_seq=cursor)  # a real event arrived: this poll is audited
    assert [e["kind"] for e in page["events"]] == ["decision"]
    assert await searches() == 2
    bulk = await poll(after_seq=0)  # reading the trail from its start is audited too
    assert len(bulk["events"]) > 2
    assert await searches() == 3
    refused = await api.http.get("/v1/audit/events", params={"after_seq": 0})
    assert refused.status_code == 401
    denied = [e for e in await api.events("admin.change") if e["action"]["outcome"] == "denied"]
    assert len(denied) == 1
