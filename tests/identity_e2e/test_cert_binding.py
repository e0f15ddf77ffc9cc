"""Certificate-bound access tokens (RFC 8705) over a real mutual-TLS handshake.

The agent gets a client certificate from Tether's CA and a token bound to it
(``cnf.x5t#S256``). A server doing real TLS with client certificates hands the peer's
certificate to ``authenticate``: the bound token passes with its own certificate only.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import text

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity.claims import Claims
from tether.identity.errors import BindingMismatch, TokenInvalid, TokenRevoked
from tether.identity.issued import Presented
from tether.store import Store

from .conftest import RESOURCE, Agent, Clock, Stack, build_service


@pytest.fixture
async def stack(store_url: str) -> AsyncIterator[Stack]:
    """As the shared fixture, on the real clock: a real TLS handshake checks validity."""
    store = await Store.open(store_url)
    clock = Clock(datetime.now(UTC))
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    try:
        yield Stack(store, clock, cipher, await build_service(store, clock, cipher))
    finally:
        await store.close()


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2020, 1, 1))
        .not_valid_after(datetime(2100, 1, 1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        .sign(key, hashes.SHA256())
    )


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


async def _peer_certificate(
    stack: Stack, client_cert_pem: str, client_key: ec.EllipticCurvePrivateKey, tmp: Path
) -> bytes:
    """Do a real TLS handshake requiring a client certificate of Tether's CA; the peer's DER."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _self_signed(server_key)
    (tmp / "server.pem").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "server.key").write_bytes(_pem(server_key))
    (tmp / "ca.pem").write_bytes(stack.service.keys.x509_ca.ca_cert_pem())
    (tmp / "client.pem").write_text(client_cert_pem)
    (tmp / "client.key").write_bytes(_pem(client_key))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp / "server.pem", tmp / "server.key")
    server_ctx.load_verify_locations(tmp / "ca.pem")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=str(tmp / "server.pem"))
    client_ctx.load_cert_chain(tmp / "client.pem", tmp / "client.key")
    seen: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen.set_result(ssl_object.getpeercert(binary_form=True))
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    async with server:
        _reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        der = await asyncio.wait_for(seen, 10)
        writer.close()
    return der


async def _bound(stack: Stack, bot: Agent) -> tuple[str, str, ec.EllipticCurvePrivateKey]:
    assert isinstance(bot.claims, Claims)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = await stack.service.x509_certificate(bot.claims, _csr(key))
    issued = await stack.service.certificate_bound_token(bot.claims, pem)
    assert issued.claims.cnf.x5t_s256 is not None and issued.claims.cnf.jkt is None
    assert issued.claims.task == bot.claims.task and issued.claims.sub == "bot"
    return issued.token, pem, key


async def test_bound_token_passes_with_its_certificate_over_mtls(
    stack: Stack, bot: Agent, tmp_path: Path
) -> None:
    token, pem, key = await _bound(stack, bot)
    der = await _peer_certificate(stack, pem, key, tmp_path)
    claims = await stack.service.authenticate(
        Presented(token, "GET", RESOURCE, None, peer_certificate_der=der)
    )
    assert claims.agent_id == "bot"


async def test_bound_token_is_useless_without_or_with_another_certificate(
    stack: Stack, bot: Agent, tmp_path: Path
) -> None:
    token, _pem, _key = await _bound(stack, bot)
    with pytest.raises(TokenInvalid):
        await stack.service.authenticate(Presented(token, "GET", RESOURCE, None))
    # Another certificate of the same CA for the same agent: a different key, refused.
    other_key = ec.generate_private_key(ec.SECP256R1())
    assert isinstance(bot.claims, Claims)
    other_pem = await stack.service.x509_certificate(bot.claims, _csr(other_key))
    with tempfile.TemporaryDirectory() as tmp:
        der = await _peer_certificate(stack, other_pem, other_key, Path(tmp))
    with pytest.raises(BindingMismatch):
        await stack.service.authenticate(
            Presented(token, "GET", RESOURCE, None, peer_certificate_der=der)
        )


async def test_only_this_agents_certificate_of_tethers_ca_can_be_bound(
    stack: Stack, bot: Agent
) -> None:
    assert isinstance(bot.claims, Claims)
    foreign = _self_signed(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(TokenInvalid):
        await stack.service.certificate_bound_token(
            bot.claims, foreign.public_bytes(serialization.Encoding.PEM).decode()
        )
    other = await stack.new_agent("other")
    await stack.join(other)
    assert isinstance(other.claims, Claims)
    other_pem = await stack.service.x509_certificate(
        other.claims, _csr(ec.generate_private_key(ec.SECP256R1()))
    )
    with pytest.raises(TokenInvalid):
        await stack.service.certificate_bound_token(bot.claims, other_pem)


async def test_a_bound_token_is_refused_while_the_revocation_list_does_not_verify(
    stack: Stack, bot: Agent, tmp_path: Path
) -> None:
    """Migration 0021: a revocation deleted behind Tether's back refuses every credential,
    and the refusal names that (not "the certificate is revoked")."""
    token, pem, key = await _bound(stack, bot)
    der = await _peer_certificate(stack, pem, key, tmp_path)
    presented = Presented(token, "GET", RESOURCE, None, peer_certificate_der=der)
    await stack.service.revoke("task", "T-other", reason="done", by="admin")
    async with stack.engine.begin() as conn:
        await conn.execute(text("DELETE FROM revocations WHERE value = 'T-other'"))
    stack.service = await build_service(stack.store, stack.clock, stack.cipher)
    with pytest.raises(TokenRevoked, match=r"^the revocation list does not verify$"):
        await stack.service.authenticate(presented)
