"""A real Tether node with the HTTP broker, in a thread, and real upstreams on loopback.

``Harness`` builds the node as ``tether serve`` does (store, identity, policies, auditor,
vault, broker mounted in the API app, uvicorn on an ephemeral port) in its own event loop;
``harness.run(coro)`` runs a coroutine there. Agents join with the SDK over HTTP and get
DPoP-bound tokens; ``Agent.headers(method, url)`` makes a fresh proof for one request.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn
import uvloop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.middleware import Middleware

from tether.api import AppState, create_app
from tether.audit.events import AuditEvent
from tether.audit.startup import start_auditor
from tether.audit.store import EventFilter, search_events
from tether.client import TetherClient
from tether.config import Settings
from tether.identity.dpop import make_proof
from tether.node import _http_broker, broker_services, open_identity
from tether.policywatch import load_initial
from tether.proxy.http.broker import BrokerMiddleware, HttpBroker
from tether.proxy.http.tlsserver import TlsH11Protocol
from tether.proxy.http.upgrade import UpgradeProtocol
from tether.store import Store
from tether.store import agents as agent_store
from tether.vault.secrets import SecretStore
from tether.vault.target_specs import HttpTargetSpec
from tether.vault.targets import TargetStore

from .certs import Pki
from .upstream import Upstream

T = TypeVar("T")

POLICY = """
rules:
  - id: read-api
    effect: allow
    agents: [bot]
    http:
      methods: [GET, HEAD]
      paths: ["/", "/v1/**", "/big", "/slow", "/cookie", "/redirect", "/leak", "/status/*",
              "/protected"]
  - id: upload
    effect: allow
    agents: [bot]
    http: {methods: [POST, PUT], paths: ["/upload"]}
  - id: no-admin
    effect: deny
    agents: ["*"]
    http: {methods: ["*"], paths: ["/v1/admin/**"]}
  - id: delete-needs-approval
    effect: allow
    agents: [bot]
    http: {methods: [DELETE], paths: ["/v1/items/*"]}
    approval: {approvers: ["group:leads"], valid_for: 30m}
"""


@dataclass
class Agent:
    """An agent's side: its DPoP key and token, and the node's issuer URL."""

    id: str
    key: Ed25519PrivateKey
    token: str
    base: str

    def proof(self, method: str, url: str, *, token: str | None = None) -> str:
        return make_proof(self.key, method, url, now=time.time(), access_token=token or self.token)

    def headers(self, method: str, url: str) -> dict[str, str]:
        return {"Authorization": f"DPoP {self.token}", "DPoP": self.proof(method, url)}


class Harness:
    def __init__(
        self, root: Path, policy: str = POLICY, *, tls: Pki | None = None, **proxy: Any
    ) -> None:
        self.root, self.tls = root, tls
        self.clients: list[TetherClient] = []
        (root / "pol").mkdir(exist_ok=True)
        (root / "pol" / "http.yaml").write_text(policy)
        self.settings = Settings(
            data_dir=root / "data", policies=root / "pol", policy_watch=False,
            database_url=f"sqlite:///{root / 'tether.db'}", http_proxy=proxy,
        )  # fmt: skip
        self.loop = uvloop.new_event_loop()  # the node's loop (tether serve runs uvloop)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as tether.node.bind
        self.port = self.sock.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.run(self._start())

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> None:
        self.store = await Store.open(self.settings.database)
        self.identity = await open_identity(self.settings, self.store, self.url)
        holder = await load_initial(self.settings.policies, self.store)
        self.auditor = await start_auditor(
            self.settings.audit, self.store.engine, lambda: self.identity.keys.ring.active
        )
        self.secrets = SecretStore(self.store.engine, self.identity.cipher)
        self.targets = TargetStore(self.store.engine, self.identity.sealer)
        state = AppState(holder, self.store, self.identity, self.auditor,
                         secrets=self.secrets, targets=self.targets)  # fmt: skip
        broker = _http_broker(self.settings, broker_services(state))
        assert broker is not None
        self.broker: HttpBroker = broker
        app = create_app(state, middleware=[Middleware(BrokerMiddleware, broker=broker)])
        config = uvicorn.Config(
            app, log_config=None, lifespan="off", server_header=False, ws=UpgradeProtocol,
            proxy_headers=False,  # as tether.node by default (no trusted_proxies)
        )  # fmt: skip
        if self.tls is not None:  # mutual TLS: client certificates from Tether's X.509 CA
            files = self.root / "tls"
            files.mkdir(exist_ok=True)
            (files / "cert.pem").write_bytes(self.tls.cert_pem)
            (files / "key.pem").write_bytes(self.tls.key_pem)
            (files / "clients.pem").write_bytes(self.identity.keys.x509_ca.ca_cert_pem())
            config = uvicorn.Config(
                app, log_config=None, lifespan="off", server_header=False,
                http=TlsH11Protocol, ssl_certfile=files / "cert.pem",
                ssl_keyfile=files / "key.pem", ssl_ca_certs=str(files / "clients.pem"),
                ssl_cert_reqs=ssl.CERT_OPTIONAL, ws=UpgradeProtocol, proxy_headers=False,
            )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.serving = asyncio.ensure_future(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            await asyncio.sleep(0.01)

    async def _stop(self) -> None:
        self.server.should_exit = True
        await self.serving
        await self.broker.close()
        await self.auditor.log.close()
        await self.store.close()

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        self.run(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    # --- administration -------------------------------------------------------------------

    def add_target(
        self,
        name: str,
        labels: Mapping[str, str] | None = None,
        *,
        replace: bool = False,
        **spec: Any,
    ) -> None:
        write = self.targets.replace if replace else self.targets.add
        self.run(write(name, "http", HttpTargetSpec(**spec), dict(labels or {})))

    def put_secret(self, name: str, value: bytes) -> None:
        self.run(self.secrets.put(name, value))

    def agent(
        self,
        agent_id: str = "bot",
        scope: list[str] | None = None,
        task: str = "T-1",
        lifetime: int | None = None,
    ) -> Agent:
        async def create() -> str:
            now = dt.datetime.now(dt.UTC)
            async with self.store.engine.begin() as conn:
                if await agent_store.get_agent(conn, agent_id) is None:
                    await agent_store.create_agent(
                        conn, self.identity.sealer, id=agent_id, owner="alice", now=now
                    )
            secret, _ = await self.identity.create_join_token(agent_id)
            return secret

        join = self.run(create())
        client = TetherClient(self.url, http=httpx.Client(verify=self.client_tls()))
        self.clients.append(client)  # open until stop(): the session may be used further
        self.last_session = client.join(
            join, task_id=task, purpose="tests", scope=scope, lifetime=lifetime
        )
        return Agent(agent_id, self.last_session.key, self.last_session.token, self.url)

    def client_tls(self) -> ssl.SSLContext | bool:
        """What an agent verifies the node with (the test CA when the node serves TLS)."""
        if self.tls is None:
            return True
        return ssl.create_default_context(cadata=self.tls.ca_pem)

    def exchanges(self, count: int, **where: Any) -> list[AuditEvent]:
        """The ``http.exchange`` events, once at least ``count`` are written (they are
        appended after the response has gone to the agent)."""
        deadline = time.monotonic() + 10
        while True:
            found = self.events("http.exchange", **where)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def events(self, kind: str | None = None, **where: Any) -> list[AuditEvent]:
        async def search() -> list[AuditEvent]:
            async with self.store.engine.connect() as conn:
                return await search_events(conn, EventFilter(kind=kind, **where), limit=1000)

        return self.run(search())


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream().start()
    yield server
    server.stop()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    made = Harness(tmp_path)
    yield made
    made.stop()


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """curl with the raw path as given (``--path-as-is``), status on the last line."""
    return subprocess.run(
        ["curl", "-sS", "--path-as-is", "-w", "\n%{http_code}", *args],
        capture_output=True, timeout=timeout, check=False,
    )  # fmt: skip


def agent_head(harness: Harness, agent: Agent, method: str, path: str, *extra: str) -> bytes:
    """A raw request head for ``/t/api<path>`` with the agent's token and a fresh proof,
    exactly as written (nothing normalized by a client library), ``extra`` header lines
    last, without the blank line that ends it (``raw_request`` adds its own)."""
    raw = "/t/api" + path
    auth = agent.headers(method, harness.url + raw)
    lines = [
        f"{method} {raw} HTTP/1.1",
        f"Host: 127.0.0.1:{harness.port}",
        f"Authorization: {auth['Authorization']}",
        f"DPoP: {auth['DPoP']}",
        *extra,
    ]
    return "\r\n".join(lines).encode("latin-1")


def raw_request(port: int, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send exactly ``head`` (request line and headers, no final blank line) and ``body``."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + b"\r\nConnection: close\r\n\r\n" + body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    answer = b"".join(chunks)
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split(b" ")[1]), rest.partition(b"\r\n\r\n")[2]


def curl_status(done: subprocess.CompletedProcess[bytes]) -> tuple[int, bytes]:
    body, _, status = done.stdout.rpartition(b"\n")
    return int(status), body
