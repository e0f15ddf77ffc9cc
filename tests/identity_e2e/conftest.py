"""A real identity service over a real store, with a clock the test moves.

``Stack`` holds the store (SQLite or PostgreSQL through ``store_url``), the keys created by
``load_or_create`` under a test master key, trusted issuers whose JWKS live in memory (one
OIDC user issuer, one Kubernetes workload issuer), and the service itself. Helpers make the
requests an agent would: join, present a token with a DPoP proof, re-scope, delegate.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity import exchange as ex
from tether.identity.claims import Claims
from tether.identity.dpop import make_proof
from tether.identity.jwks import JwksCache, JwksSource
from tether.identity.keystore import load_or_create
from tether.identity.revision_copy import RevisionCopy
from tether.identity.revocation_copy import RevocationCopy
from tether.identity.service import IdentityService, IdentitySettings, IssuedToken, Presented
from tether.identity.workload import IssuerConfig, TrustedIssuers
from tether.store import Store
from tether.store import agents as agent_store

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
ISSUER = "http://tether"
TOKEN_URL = ISSUER + "/oauth/token"
RESOURCE = ISSUER + "/v1/whoami"
IDP_ISS = "https://idp.example"
OTHER_IDP_ISS = "https://rogue-idp.example"
K8S_ISS = "https://k8s.example"

USER_KEY = ed25519.Ed25519PrivateKey.generate()
WORKLOAD_KEY = ec.generate_private_key(ec.SECP256R1())


class Clock:
    """A clock that only moves when the test says so."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)

    @property
    def now(self) -> float:
        return self.at.timestamp()


def jwks_fetch(key: Any, kid: str) -> Any:
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    document = json.dumps({"keys": [{**jwk, "kid": kid, "use": "sig"}]}).encode()

    async def fetch() -> bytes:
        return document

    return fetch


@dataclass
class Agent:
    """An agent's side: its DPoP key and the tokens it holds."""

    id: str
    key: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    token: str = ""
    claims: Claims | None = None


@dataclass
class Stack:
    store: Store
    clock: Clock
    cipher: EnvelopeCipher
    service: IdentityService
    master: MasterKey | None = None  # the key under ``cipher``, when a test needs its text

    @property
    def engine(self) -> Any:
        return self.store.engine

    async def new_agent(self, agent_id: str = "bot") -> Agent:
        async with self.engine.begin() as conn:
            await agent_store.create_agent(
                conn, self.service.sealer, id=agent_id, owner="alice", now=self.clock()
            )
        return Agent(agent_id)

    def proof(
        self,
        agent: Agent,
        method: str = "GET",
        url: str = RESOURCE,
        *,
        token: str | None = None,
        now: float | None = None,
        **kw: Any,
    ) -> str:
        return make_proof(
            agent.key,
            method,
            url,
            now=self.clock.now if now is None else now,
            access_token=token,
            **kw,
        )

    async def join(
        self, agent: Agent, *, task: str = "T-1", extra: Mapping[str, str] | None = None
    ) -> IssuedToken:
        """A one-time join token for ``agent``, exchanged: the agent then holds its token."""
        text, _ = await self.service.create_join_token(agent.id)
        issued = await self.exchange(agent, join_form(text, task, **(extra or {})))
        agent.token, agent.claims = issued.token, issued.claims
        return issued

    async def exchange(
        self, agent: Agent, form: Mapping[str, str], *, ath: str | None = None
    ) -> IssuedToken:
        dpop = self.proof(agent, "POST", TOKEN_URL, token=ath)
        return await self.service.exchange(form, dpop=dpop, url=TOKEN_URL, address="10.0.0.7")

    async def present(self, agent: Agent, token: str | None = None, **proof: Any) -> Claims:
        token = agent.token if token is None else token
        dpop = proof.pop("dpop", None) or self.proof(agent, token=token, **proof)
        return await self.service.authenticate(Presented(token, "GET", RESOURCE, dpop))

    def user_token(self, user: str = "alice", *, iss: str = IDP_ISS, **claims: Any) -> str:
        now = int(self.clock.now)
        body = {
            "iss": iss,
            "aud": "tether",
            "sub": user,
            "iat": now,
            "exp": now + 900,
            "groups": ["finance"],
            **claims,
        }
        return jwt.encode(body, USER_KEY, algorithm="EdDSA", headers={"kid": "idp-1"})

    def workload_token(self, pod: str = "billing-7f9c", **claims: Any) -> str:
        now = int(self.clock.now)
        body = {
            "iss": K8S_ISS,
            "aud": ["tether"],
            "sub": "system:serviceaccount:prod:billing",
            "iat": now,
            "exp": now + 600,
            "kubernetes.io": {
                "namespace": "prod",
                "pod": {"name": pod, "uid": "p"},
                "serviceaccount": {"name": "billing", "uid": "s"},
            },
            **claims,
        }
        return jwt.encode(body, WORKLOAD_KEY, algorithm="ES256", headers={"kid": "k8s-1"})


def join_form(token: str, task: str = "T-1", **extra: str) -> dict[str, str]:
    return {
        "grant_type": ex.GRANT_TYPE,
        "subject_token": token,
        "subject_token_type": ex.JOIN_TOKEN,
        "task_id": task,
        "task_purpose": "testing",
        **extra,
    }


def rescope_form(token: str, task: str, **extra: str) -> dict[str, str]:
    return {**join_form(token, task, **extra), "subject_token_type": ex.ACCESS_TOKEN}


def delegate_form(
    user_token: str, actor_token: str, task: str = "T-1", **extra: str
) -> dict[str, str]:
    return {
        **join_form(user_token, task, **extra),
        "subject_token_type": ex.ID_TOKEN,
        "actor_token": actor_token,
        "actor_token_type": ex.ACCESS_TOKEN,
    }


def settings(**overrides: Any) -> IdentitySettings:
    values: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": "tether",
        "trust_domain": "tether.test",
        "workload_agents": {"cluster": {"system:serviceaccount:prod:billing": "billing"}},
        **overrides,
    }
    return IdentitySettings(**values)


def trusted_issuers(clock: Clock) -> TrustedIssuers:
    source = JwksSource(url="https://unused.example/jwks")
    idp = IssuerConfig(name="idp", issuer=IDP_ISS, audiences=["tether"], jwks=source, kind="oidc")
    k8s = IssuerConfig(
        name="cluster", issuer=K8S_ISS, audiences=["tether"], jwks=source, kind="kubernetes"
    )
    return TrustedIssuers(
        [
            (idp, JwksCache(jwks_fetch(USER_KEY, "idp-1"), clock=clock)),
            (k8s, JwksCache(jwks_fetch(WORKLOAD_KEY, "k8s-1"), clock=clock)),
        ]
    )


async def build_service(
    store: Store,
    clock: Clock,
    cipher: EnvelopeCipher,
    *,
    revocation_copy: RevocationCopy | None = None,
    revision_copy: RevisionCopy | None = None,
    **overrides: Any,
) -> IdentityService:
    """A service as a node builds it (``load_or_create`` finds or makes the keys; the
    node's files, when given, held before the database is read, as ``tether serve`` does)."""
    config = settings(**overrides)
    if revision_copy is not None:  # held first, as tether.node.open_identity does
        revision_copy.hold()
        cipher = cipher.witnessed(revision_copy.revisions)
    keys = await load_or_create(
        store.engine,
        cipher,
        clock=clock,
        overlap=float(config.max_token_lifetime),
        trust_domain=config.trust_domain,
    )
    service = IdentityService(
        store.engine, keys, cipher, config, issuers=trusted_issuers(clock), clock=clock,
        revocation_copy=revocation_copy, revision_copy=revision_copy,
    )  # fmt: skip
    service.hold_revocation_copy()
    service.hold_revision_copy()
    await service.refresh_revocations()
    return service


@pytest.fixture
async def stack(store_url: str) -> AsyncIterator[Stack]:
    store = await Store.open(store_url)
    clock = Clock()
    master = MasterKey(secrets.token_bytes(32), "test")
    cipher = EnvelopeCipher(master)
    try:
        yield Stack(store, clock, cipher, await build_service(store, clock, cipher), master)
    finally:
        await store.close()


@pytest.fixture
async def bot(stack: Stack) -> Agent:
    """An agent ``bot`` that has joined (its token in ``bot.token``)."""
    agent = await stack.new_agent("bot")
    await stack.join(agent)
    return agent
