"""The vault's admin API through httpx's ASGI transport, over a real store and audit trail.

Secrets go in and never come out (answers, errors, audit events); reserved names are out of
reach; targets are validated strictly; every refusal is an RFC 9457 problem.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.identity_e2e.conftest import Clock, build_service
from tether.api import AppState, PolicyHolder, create_app
from tether.audit.config import AuditConfig
from tether.audit.schema import audit_events
from tether.audit.startup import start_auditor
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.admintokens import create_admin_token
from tether.policy import PolicySource, load_policies
from tether.store import Store
from tether.vault.secrets import SecretStore
from tether.vault.targets import TargetStore

from .conftest import ca_pem

POLICY = (
    "rules:\n  - id: r\n    effect: allow\n    agents: [bot]\n    targets: [t]\n"
    "    mcp: {tools: [x]}\n"
)
PROBLEM = "application/problem+json"
VALUE = b"ghp_S3cretValue-\x00\xff-binary"


@dataclass
class Api:
    http: httpx.AsyncClient
    admin: dict[str, str]
    store: Store
    secrets: SecretStore
    targets: TargetStore

    async def put(self, name: str, value: bytes = VALUE, **body: Any) -> httpx.Response:
        payload = {"value_b64": base64.b64encode(value).decode(), **body}
        return await self.http.put(f"/v1/secrets/{name}", json=payload, headers=self.admin)

    async def audit_text(self) -> str:
        async with self.store.engine.connect() as conn:
            rows = await conn.execute(
                select(audit_events.c.action, audit_events.c.detail, audit_events.c.target)
            )
            return "\n".join(" ".join(str(v) for v in row) for row in rows)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    service = await build_service(store, clock, cipher)
    auditor = await start_auditor(AuditConfig(), store.engine, lambda: service.keys.ring.active)
    vault = SecretStore(store.engine, service.cipher)
    holder = PolicyHolder(load_policies([PolicySource("a.yaml", POLICY)]))
    targets = TargetStore(store.engine, cipher.sealer)
    state = AppState(holder, store, service, auditor, secrets=vault, targets=targets)
    token, _ = await create_admin_token(store.engine, cipher.sealer, name="test", now=clock())
    transport = httpx.ASGITransport(app=create_app(state))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://tether") as http:
            yield Api(http, {"Authorization": f"Bearer {token}"}, store, vault, targets)
    finally:
        await auditor.log.close()
        await store.close()


def problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"] == "about:blank"
    return str(body.get("detail"))


# --- secrets ------------------------------------------------------------------------------


async def test_secret_lifecycle_never_returns_the_value(api: Api) -> None:
    created = await api.put("billing/stripe", description="Stripe key")
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["created"] is True
    rotated = await api.put("billing/stripe", b"second")
    assert rotated.status_code == 200
    assert rotated.json()["version"] == 2 and rotated.json()["description"] == "Stripe key"
    assert await api.secrets.get("billing/stripe") == b"second"

    shown = await api.http.get("/v1/secrets/billing/stripe", headers=api.admin)
    assert shown.status_code == 200
    assert set(shown.json()) == {"name", "version", "description", "created_at", "updated_at"}
    listed = await api.http.get("/v1/secrets", headers=api.admin)
    assert [s["name"] for s in listed.json()["secrets"]] == ["billing/stripe"]

    deleted = await api.http.delete("/v1/secrets/billing/stripe", headers=api.admin)
    assert deleted.json() == {"name": "billing/stripe", "deleted": True}
    problem(await api.http.get("/v1/secrets/billing/stripe", headers=api.admin), 404)
    problem(await api.http.delete("/v1/secrets/billing/stripe", headers=api.admin), 404)

    encoded = base64.b64encode(VALUE).decode()
    trail = await api.audit_text()
    assert "secret.put" in trail and "vault:billing/stripe" in trail
    for text in (VALUE.decode("latin-1"), encoded, "second", base64.b64encode(b"second").decode()):
        assert text not in trail
        assert text not in shown.text + listed.text + created.text + rotated.text


async def test_modes(api: Api) -> None:
    assert "no secret named" in problem(await api.put("x", mode="rotate"), 404)
    assert (await api.put("x", mode="create")).status_code == 201
    assert "already exists" in problem(await api.put("x", mode="create"), 409)
    assert (await api.put("x", mode="rotate")).json()["version"] == 2


async def test_reserved_names_out_of_reach(api: Api) -> None:
    await api.secrets.put("tether/ssh-target-ca", b"internal-ca-key")
    for case in ("tether/ssh-target-ca", "Tether/other"):
        assert "reserved" in problem(await api.put(case), 422)
        assert "reserved" in problem(
            await api.http.get(f"/v1/secrets/{case}", headers=api.admin), 422
        )
        problem(await api.http.delete(f"/v1/secrets/{case}", headers=api.admin), 422)
    listed = await api.http.get("/v1/secrets", headers=api.admin)
    assert listed.json() == {"secrets": []}
    assert await api.secrets.get("tether/ssh-target-ca") == b"internal-ca-key"


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        ({"value_b64": "!!!"}, 422, "not standard base64"),
        ({"value_b64": ""}, 422, "must not be empty"),
        ({"value_b64": base64.b64encode(b"x").decode(), "extra": 1}, 422, "extra"),
        ({"value_b64": base64.b64encode(b"x").decode(), "mode": "upsert"}, 422, "mode"),
        ({"value_b64": "AA=="}, 201, ""),
    ],
)
async def test_put_body_refusals(api: Api, body: dict[str, Any], status: int, text: str) -> None:
    answer = await api.http.put("/v1/secrets/s", json=body, headers=api.admin)
    if status == 201:
        assert answer.status_code == 201
        return
    assert text in problem(answer, status)


async def test_bad_names_and_empty_value(api: Api) -> None:
    assert "invalid secret name" in problem(await api.put("-x"), 422)
    # httpx removes dot segments itself (so names may not have them); encoded, they arrive.
    assert "invalid secret name" in problem(await api.put("a/%2E%2E/b"), 422)
    assert "invalid secret name" in problem(await api.put("a%2F%2Fb"), 422)
    assert "must not be empty" in problem(await api.put("ok", b""), 422)


async def test_admin_token_required(api: Api) -> None:
    problem(await api.http.get("/v1/secrets"), 401)
    answer = await api.http.put(
        "/v1/secrets/x", json={"value_b64": "eA=="}, headers={"Authorization": "Bearer tat_x.y"}
    )
    problem(answer, 401)
    problem(await api.http.get("/v1/targets"), 401)
    assert (await api.secrets.list()) == []


# --- targets ------------------------------------------------------------------------------

HTTP_SPEC = {
    "base_url": "https://api.example.com/v2",
    "credential": {"type": "bearer", "secret": "example/token"},
}


async def test_target_lifecycle(api: Api) -> None:
    body = {"name": "payments", "kind": "http", "spec": HTTP_SPEC, "labels": {"env": "prod"}}
    added = await api.http.post("/v1/targets", json=body, headers=api.admin)
    assert added.status_code == 201, added.text
    target = added.json()
    assert target["spec"]["tls_verify"] is True and target["spec"]["read_timeout"] == 60.0
    assert target["missing_secrets"] == ["example/token"] and target["warnings"] == []
    problem(await api.http.post("/v1/targets", json=body, headers=api.admin), 409)

    await api.put("example/token")
    shown = await api.http.get("/v1/targets/payments", headers=api.admin)
    assert shown.json()["missing_secrets"] == []

    insecure = {**HTTP_SPEC, "tls_verify": False}
    replaced = await api.http.put(
        "/v1/targets/payments", json={"kind": "http", "spec": insecure}, headers=api.admin
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["labels"] == {}
    assert replaced.json()["created_at"] == target["created_at"]
    assert any("NOT verified" in w for w in replaced.json()["warnings"])

    pem = ca_pem()
    ssh_body = {
        "name": "db",
        "kind": "postgres",
        "spec": {
            "host": "db.internal",
            "database": "app",
            "ca_bundle": pem,
            "credential": {"type": "password", "username": "app", "secret": "db/pw"},
        },
    }
    assert (await api.http.post("/v1/targets", json=ssh_body, headers=api.admin)).is_success
    only_http = await api.http.get("/v1/targets?kind=http", headers=api.admin)
    assert [t["name"] for t in only_http.json()["targets"]] == ["payments"]
    every = await api.http.get("/v1/targets", headers=api.admin)
    assert [t["name"] for t in every.json()["targets"]] == ["db", "payments"]
    problem(await api.http.get("/v1/targets?kind=ftp", headers=api.admin), 422)

    removed = await api.http.delete("/v1/targets/payments", headers=api.admin)
    assert removed.json() == {"name": "payments", "removed": True}
    problem(await api.http.get("/v1/targets/payments", headers=api.admin), 404)
    problem(await api.http.delete("/v1/targets/payments", headers=api.admin), 404)
    problem(
        await api.http.put(
            "/v1/targets/payments", json={"kind": "http", "spec": HTTP_SPEC}, headers=api.admin
        ),
        404,
    )


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"name": "Bad_Name", "kind": "http", "spec": HTTP_SPEC}, "invalid target name"),
        (
            {"name": "t", "kind": "http", "spec": {**HTTP_SPEC, "tls_verifiy": False}},
            "tls_verifiy: Extra",
        ),
        ({"name": "t", "kind": "http", "spec": {"base_url": "https://u:p@h"}}, "user info"),
        ({"name": "t", "kind": "ssh", "spec": {"host": "h", "users": ["a"]}}, "credential"),
        ({"name": "t", "kind": "http", "spec": HTTP_SPEC, "labels": {"-x": "1"}}, "label"),
        (
            {
                "name": "t",
                "kind": "http",
                "spec": {**HTTP_SPEC, "credential": {"type": "bearer", "secret": "tether/x"}},
            },
            "reserved",
        ),
    ],
)
async def test_target_refusals(api: Api, body: dict[str, Any], text: str) -> None:
    assert text in problem(await api.http.post("/v1/targets", json=body, headers=api.admin), 422)
    assert await api.targets.list() == []
