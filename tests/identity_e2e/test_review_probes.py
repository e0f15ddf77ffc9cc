"""Adversarial probes of the identity service and its HTTP API (review of branch review-id).

Each test sends what an attacker (or a confused client) would, to the real service over a
real store, and states what must happen. See the review report for the findings.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.identity_e2e.conftest import (
    RESOURCE,
    TOKEN_URL,
    Agent,
    Clock,
    Stack,
    build_service,
    join_form,
)
from tether.api import AppState, PolicyHolder, create_app
from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.admintokens import create_admin_token
from tether.identity.claims import Claims
from tether.identity.errors import CredentialError, ReplayDetected
from tether.identity.issued import Presented
from tether.policy import PolicySource, load_policies
from tether.store import Store
from tether.users import totp

POLICY = (
    "rules:\n  - id: r\n    effect: allow\n    agents: [bot]\n    targets: [t]\n"
    "    mcp: {tools: [x]}\n"
)


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Stack, dict[str, str]]]:
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'tether.db'}")
    clock = Clock()
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    stack = Stack(store, clock, cipher, await build_service(store, clock, cipher))
    holder = PolicyHolder(load_policies([PolicySource("a.yaml", POLICY)]))
    app = create_app(AppState(holder, store, stack.service))
    token, _ = await create_admin_token(store.engine, cipher.sealer, name="test", now=clock())
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://tether") as client:
            yield client, stack, {"Authorization": f"Bearer {token}"}
    finally:
        await store.close()


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


async def _bound_token(stack: Stack, bot: Agent) -> tuple[str, bytes, str]:
    """An x509 certificate for ``bot`` and a token bound to it: (token, cert DER, cert id)."""
    assert isinstance(bot.claims, Claims)
    pem = await stack.service.x509_certificate(
        bot.claims, _csr(ec.generate_private_key(ec.SECP256R1()))
    )
    issued = await stack.service.certificate_bound_token(bot.claims, pem)
    cert = x509.load_pem_x509_certificate(pem.encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    # The id the credential record, ``GET /v1/agents/{id}`` and the audit event give it.
    return issued.token, der, f"x509_certificate:{format(cert.serial_number, 'x')}"


# --- the token endpoint: requested_lifetime -----------------------------------------------


@pytest.mark.parametrize("lifetime", ["\u00b2", "\u2460", "1\u00b3", "0" * 5000 + "1"])
async def test_requested_lifetime_with_a_unicode_digit_is_a_400_not_a_crash(
    http: tuple[httpx.AsyncClient, Stack, dict[str, str]], lifetime: str
) -> None:
    """``str.isdigit`` is true for superscripts and circled digits, which ``int`` refuses, as
    it refuses more than 4,300 digits: the token endpoint must answer ``invalid_request``,
    not a 500 (and audit the refusal)."""
    client, stack, admin = http
    await client.post("/v1/agents", json={"id": "bot", "owner": "a"}, headers=admin)
    minted = await client.post("/v1/agents/bot/join-tokens", headers=admin)
    agent = Agent("bot")
    form = join_form(minted.json()["join_token"], requested_lifetime=lifetime)
    proof = stack.proof(agent, "POST", TOKEN_URL)
    answer = await client.post("/oauth/token", data=form, headers={"DPoP": proof})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "invalid_request"


# --- certificate-bound tokens and revocation -----------------------------------------------


async def test_revoking_the_x509_certificate_ends_its_bound_token(stack: Stack, bot: Agent) -> None:
    """Revoking a certificate by the id Tether records and audits it under
    (``x509_certificate:<serial>``, as ``ssh_certificate:<serial>`` for SSH) must end the
    token bound to that certificate."""
    token, der, cert_id = await _bound_token(stack, bot)
    presented = Presented(token, "GET", RESOURCE, None, peer_certificate_der=der)
    assert (await stack.service.authenticate(presented)).agent_id == "bot"
    await stack.service.revoke("token", cert_id, reason="key leaked", by="admin")
    with pytest.raises(CredentialError):
        await stack.service.authenticate(presented)


async def test_revoking_the_issuing_token_ends_the_certificate_bound_token(
    stack: Stack, bot: Agent
) -> None:
    """An SSH certificate dies with the token that asked for it ("Revoking the issuing token
    ends the session", docs/ssh-broker.md); the X.509 certificate-bound token must too,
    or revoking a stolen token leaves the thief a bearer-like credential for the rest of
    the certificate's life."""
    assert isinstance(bot.claims, Claims)
    token, der, _cert_id = await _bound_token(stack, bot)
    presented = Presented(token, "GET", RESOURCE, None, peer_certificate_der=der)
    await stack.service.revoke("token", bot.claims.jti, reason="stolen", by="admin")
    with pytest.raises(CredentialError):
        await stack.service.authenticate(presented)


# --- DPoP replay across nodes ----------------------------------------------------------------


async def test_a_dpop_proof_replayed_to_another_node_is_refused(stack: Stack, bot: Agent) -> None:
    """N nodes on one database (DESIGN "Scale"): a proof accepted by one node must be a
    replay on every other, or a captured token + proof works once more per node for 60 s
    (and since ``htu`` has no query, on the HTTP broker for another query and body)."""
    other = await build_service(stack.store, stack.clock, stack.cipher)
    proof = stack.proof(bot, token=bot.token)
    presented = Presented(bot.token, "GET", RESOURCE, proof)
    assert (await stack.service.authenticate(presented)).sub == "bot"
    with pytest.raises(ReplayDetected):
        await other.authenticate(presented)


# --- TOTP codes -----------------------------------------------------------------------------


def test_a_totp_code_of_non_ascii_digits_is_wrong_not_a_crash() -> None:
    """Six superscript digits pass ``str.isdigit``; ``hmac.compare_digest`` then raised
    ``TypeError`` on the non-ASCII text: a 500 at ``POST /v1/login`` instead of a refused,
    audited and throttled sign-in."""
    secret = "JBSWY3DPEHPK3PXP"
    assert totp.verify(secret, "\u00b2" * 6, 59) is None
