"""A real broker in-process over real parts: store, identity, vault, audit, PostgreSQL.

``Broker`` starts :class:`tether.proxy.pg.server.PgBroker` on a free loopback port with an
identity service (real clock), an audit trail, a secret and target store on SQLite, and a
policy set the test can replace. The target ``app`` is a database on the session's test
PostgreSQL (tests/pg.py) reached as the role ``app_user`` with a vaulted password; the target
``dyn`` uses dynamic roles in the same database. Agents join with a DPoP key; ``password()``
makes the login password (token and a fresh proof).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from sqlalchemy import select

from tests.identity_e2e.conftest import build_service
from tests.node_loop import pytest_asyncio_loop_factories  # noqa: F401 - the node's loop
from tests.pg import PostgresServer
from tether.api.state import PolicyHolder
from tether.audit.config import AuditConfig
from tether.audit.emit import Auditor
from tether.audit.schema import audit_events
from tether.audit.startup import start_auditor
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity import exchange as ex
from tether.identity.service import IdentityService
from tether.policy import PolicySource, load_policies
from tether.proxy.core import AgentLabels, Services
from tether.proxy.pg.auth import dpop_password
from tether.proxy.pg.config import PgProxyConfig
from tether.proxy.pg.server import PgBroker
from tether.store import Store
from tether.store import agents as agent_store
from tether.vault.secrets import SecretStore
from tether.vault.targets import TargetStore

from .wire import Wire, errors, status

DATABASE = "broker_app"
APP_PASSWORD = "app-" + secrets.token_urlsafe(12)
ADMIN_PASSWORD = "adm-" + secrets.token_urlsafe(12)

POLICY = """
rules:
  - id: read-public
    effect: allow
    agents: [bot]
    sql: {statements: [select, set, transaction, explain], tables: ["public.*", "pg_catalog.*"]}
  - id: write-items
    effect: allow
    agents: [bot]
    sql: {statements: [insert, update, delete], tables: ["public.items", "public.pgbench_*"]}
  - id: no-secrets
    effect: deny
    sql: {statements: ["*"], tables: ["public.secrets", "vault.*"]}
  - id: copy-needs-approval
    effect: allow
    agents: [bot]
    sql: {statements: [truncate], tables: ["public.items"]}
    approval: {approvers: ["group:dba"], valid_for: 30m}
"""

SCHEMA = """
CREATE ROLE app_user LOGIN PASSWORD '{app}';
CREATE ROLE app_admin LOGIN CREATEROLE PASSWORD '{admin}';
CREATE ROLE app_reader NOLOGIN;
GRANT app_reader TO app_admin WITH ADMIN OPTION;
"""

TABLES = """
CREATE TABLE items (id int PRIMARY KEY, name text);
CREATE TABLE secrets (id int, value text);
CREATE SCHEMA vault;
CREATE TABLE vault.items (id int, value text);
INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 10) g;
INSERT INTO secrets VALUES (1, 'hunter2');
INSERT INTO vault.items VALUES (1, 'vaulted');
GRANT ALL ON ALL TABLES IN SCHEMA public TO app_user, app_reader;
GRANT ALL ON SCHEMA public TO app_user, app_reader;
GRANT USAGE ON SCHEMA vault TO app_user, app_reader;
GRANT ALL ON ALL TABLES IN SCHEMA vault TO app_user, app_reader;
"""


class RealClock:
    """The identity service's clock: real time (TLS and proofs use it)."""

    def __call__(self) -> datetime:
        return datetime.now(UTC)

    @property
    def now(self) -> float:
        return time.time()


_PREPARED: list[PostgresServer] = []


@pytest.fixture(scope="session")
def app_db(pg_server: PostgresServer) -> PostgresServer:
    """The session's application database with its roles and tables.

    Other test packages import this fixture, which gives each importing module its own
    session-scoped instance; the roles and the database are created once per server."""
    if not any(server is pg_server for server in _PREPARED):
        pg_server.psql(SCHEMA.format(app=APP_PASSWORD, admin=ADMIN_PASSWORD))
        pg_server.create_database(DATABASE)
        pg_server.psql(TABLES, database=DATABASE)
        _PREPARED.append(pg_server)
    return pg_server


@dataclass
class AgentKey:
    id: str
    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    token: str = ""
    claims: Any = None


@dataclass
class Broker:
    pg: PostgresServer
    store: Store
    identity: IdentityService
    holder: PolicyHolder
    auditor: Auditor
    secrets: SecretStore
    targets: TargetStore
    broker: PgBroker
    data_dir: Path

    @property
    def port(self) -> int:
        return self.broker.port

    @property
    def address(self) -> str:
        return self.broker.config.advertised

    def set_policy(self, text: str) -> None:
        self.holder.replace(load_policies([PolicySource("p.yaml", textwrap.dedent(text))]))

    async def agent(self, agent_id: str = "bot", task: str = "T-1") -> AgentKey:
        async with self.store.engine.begin() as conn:
            if await agent_store.get_agent(conn, agent_id) is None:
                await agent_store.create_agent(
                    conn, self.identity.sealer, id=agent_id, owner="alice", now=datetime.now(UTC)
                )
        agent = AgentKey(agent_id)
        join, _ = await self.identity.create_join_token(agent_id)
        form = {
            "grant_type": ex.GRANT_TYPE, "subject_token": join,
            "subject_token_type": ex.JOIN_TOKEN, "task_id": task, "task_purpose": "testing",
        }  # fmt: skip
        from tether.identity.dpop import make_proof

        url = "http://tether/oauth/token"
        proof = make_proof(agent.key, "POST", url, now=time.time())
        issued = await self.identity.exchange(form, dpop=proof, url=url, address="127.0.0.1")
        agent.token, agent.claims = issued.token, issued.claims
        return agent

    async def bound_login(self, agent: AgentKey, directory: Path) -> tuple[str, Path, Path]:
        """A certificate-bound token for ``agent``, its client certificate and key files."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
        csr_pem = csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        cert_pem = await self.identity.x509_certificate(agent.claims, csr_pem.decode())
        bound = await self.identity.certificate_bound_token(agent.claims, cert_pem)
        cert_path, key_path = directory / f"{agent.id}.crt", directory / f"{agent.id}.key"
        cert_path.write_text(cert_pem)
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        return bound.token, cert_path, key_path

    async def session(self) -> Wire:
        """A raw wire session of a new ``bot`` agent, logged in and idle."""
        agent = await self.agent()
        wire = await Wire.open(self.port)
        frames = await wire.login(self.password(agent))
        assert status(frames) == "I", errors(frames)
        return wire

    def password(self, agent: AgentKey, database: str = "app") -> str:
        return dpop_password(agent.token, agent.key, public_address=self.address, database=database)

    def dsn(self, agent: AgentKey, database: str = "app", **extra: str) -> dict[str, Any]:
        return {
            "host": "127.0.0.1", "port": self.port, "dbname": database, "user": agent.id,
            "password": self.password(agent, database), "sslmode": "require", **extra,
        }  # fmt: skip

    async def wait_for(self, kind: str, count: int = 1, timeout: float = 10) -> list[Any]:
        """The events of ``kind`` once there are ``count`` of them (sessions end async)."""
        deadline = time.monotonic() + timeout
        while True:
            found = await self.events(kind)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.05)

    async def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(audit_events).order_by(audit_events.c.seq)
        async with self.store.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        out = []
        for row in rows:
            event = dict(row)
            for key in ("action", "detail"):
                if isinstance(event.get(key), str):
                    event[key] = json.loads(event[key])
            out.append(event)
        return [e for e in out if kind is None or e["kind"] == kind]


async def make_broker(
    pg: PostgresServer, tmp_path: Path, audit: AuditConfig | None = None
) -> tuple[Broker, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    clock = RealClock()
    identity = await build_service(store, clock, cipher)  # type: ignore[arg-type]
    holder = PolicyHolder(load_policies([PolicySource("p.yaml", POLICY)]))
    auditor = await start_auditor(
        audit or AuditConfig(), store.engine, lambda: identity.keys.ring.active
    )
    secret_store = SecretStore(store.engine, cipher)
    target_store = TargetStore(store.engine, cipher.sealer)
    await secret_store.put("app-password", APP_PASSWORD.encode())
    await secret_store.put("app-admin", ADMIN_PASSWORD.encode())
    base = {"host": "127.0.0.1", "port": pg.port, "database": DATABASE, "tls_mode": "disable"}
    await target_store.add(
        "app", "postgres",
        {**base, "credential": {"type": "password", "username": "app_user",
                                "secret": "app-password"}},
    )  # fmt: skip
    await target_store.add(
        "dyn", "postgres",
        {**base, "credential": {"type": "dynamic", "admin_username": "app_admin",
                                "admin_secret": "app-admin", "parent_role": "app_reader",
                                "validity_seconds": 600}},
    )  # fmt: skip
    services = Services(
        holder,
        identity,
        secret_store,
        target_store,
        AgentLabels(store.engine, identity.sealer),
        auditor,
    )
    config = PgProxyConfig(enabled=True, listen="127.0.0.1:0")
    broker = PgBroker(config, services, tmp_path, client_ca_pem=identity.keys.x509_ca.ca_cert_pem())
    await broker.start()
    # The advertised address must be the real port (listen said 0).
    broker.config = config.model_copy(update={"listen": f"127.0.0.1:{broker.port}"})
    b = Broker(pg, store, identity, holder, auditor, secret_store, target_store, broker, tmp_path)
    return b, store


@pytest.fixture
async def broker(app_db: PostgresServer, tmp_path: Path) -> AsyncIterator[Broker]:
    b, store = await make_broker(app_db, tmp_path)
    try:
        yield b
    finally:
        await b.broker.stop()
        await b.auditor.log.close()
        await store.close()


@pytest.fixture
def pg_env() -> Iterator[dict[str, str]]:
    import os

    yield {k: v for k, v in os.environ.items() if not k.startswith("PG")}
