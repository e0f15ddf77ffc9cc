"""Short-lived SPIFFE client certificates: their content, and real mTLS handshakes with them."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.identity.errors import IssuanceError
from tether.identity.x509ca import (
    BACKDATE_SECONDS,
    SpiffeId,
    X509CaError,
    X509ClientCA,
    agent_spiffe_id,
    parse_spiffe_id,
    spiffe_ids_of,
)

NOW = datetime(2026, 11, 29, 10, 0, 0, tzinfo=UTC)
AGENT_ID = "spiffe://tether.example/agent/billing-bot/task/T-118"


@pytest.fixture(scope="module")
def ca() -> X509ClientCA:
    return X509ClientCA.generate("tether.example", clock=lambda: datetime.now(UTC))


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _csr(key: ec.EllipticCurvePrivateKey, cn: str = "admin") -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    )
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.UniformResourceIdentifier("spiffe://evil/agent/x")]),
        critical=False,
    ).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _load(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


# --- SPIFFE IDs -------------------------------------------------------------------------------


def test_spiffe_id_parses_into_trust_domain_and_segments() -> None:
    parsed = parse_spiffe_id(AGENT_ID)
    assert parsed == SpiffeId("tether.example", "/agent/billing-bot/task/T-118")
    assert parsed.segments == ("agent", "billing-bot", "task", "T-118")
    assert str(parsed) == AGENT_ID
    assert parse_spiffe_id("spiffe://td").segments == ()


@pytest.mark.parametrize(
    "value",
    [
        "https://tether.example/agent/x",
        "SPIFFE://tether.example/agent/x",
        "spiffe://Tether.example/agent/x",
        "spiffe://tether.example:443/agent/x",
        "spiffe://user@tether.example/agent/x",
        "spiffe:///agent/x",
        "spiffe://tether.example/agent/x?q=1",
        "spiffe://tether.example/agent/x#frag",
        "spiffe://tether.example/agent/x/",
        "spiffe://tether.example//x",
        "spiffe://tether.example/agent/../admin",
        "spiffe://tether.example/./x",
        "spiffe://tether.example/agent/b%2Fc",
        "spiffe://tether.example/agent/é",
        "spiffe://" + "a" * 256,
        "spiffe://td/" + "a" * 2048,
    ],
)
def test_malformed_spiffe_ids_are_refused(value: str) -> None:
    with pytest.raises(X509CaError):
        parse_spiffe_id(value)


def test_agent_spiffe_id_is_built_and_validated() -> None:
    assert str(agent_spiffe_id("tether.example", agent="billing-bot", task="T-118")) == AGENT_ID
    with pytest.raises(X509CaError):
        agent_spiffe_id("tether.example", agent="a/../b", task="t")


_SPIFFE_ALPHABET = st.sampled_from(list("spiffe:/.-_%?#@aZ09 é\x00"))


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(st.text(max_size=80), st.text(_SPIFFE_ALPHABET, max_size=40).map("spiffe://".__add__))
)
def test_spiffe_parser_never_crashes_and_round_trips(value: str) -> None:
    try:
        parsed = parse_spiffe_id(value)
    except X509CaError:
        return
    assert str(parsed) == value
    assert parsed.trust_domain == parsed.trust_domain.lower()
    assert not any(c in value.removeprefix("spiffe://") for c in "?#%@: \x00")


# --- what is issued ---------------------------------------------------------------------------


def test_issued_certificate_is_a_short_lived_client_only_svid() -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    key = _p256()
    cert = _load(ca.issue(key.public_key(), spiffe_id=AGENT_ID, validity_seconds=900))
    assert cert.subject == x509.Name([])
    assert cert.issuer == ca.ca_cert.subject
    assert cert.not_valid_before_utc == NOW - timedelta(seconds=BACKDATE_SECONDS)
    assert cert.not_valid_after_utc == NOW + timedelta(seconds=900)
    ext = cert.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and list(san.value) == [x509.UniformResourceIdentifier(AGENT_ID)]
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    assert not (usage.value.key_cert_sign or usage.value.key_encipherment or usage.value.crl_sign)
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(ca.ca_cert)


def test_serials_are_random_and_up_to_128_bits() -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    key = _p256().public_key()
    serials = {
        _load(ca.issue(key, spiffe_id=AGENT_ID, validity_seconds=60)).serial_number
        for _ in range(16)
    }
    assert len(serials) == 16
    assert all(0 < s < 2**128 for s in serials)
    assert max(serials).bit_length() > 100


def test_from_a_csr_only_the_key_is_kept() -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    key = _p256()
    cert = _load(ca.issue(_csr(key).decode(), spiffe_id=AGENT_ID, validity_seconds=60))
    assert cert.public_key() == key.public_key()
    assert cert.subject == x509.Name([])
    assert spiffe_ids_of(cert.public_bytes(serialization.Encoding.PEM)) == [AGENT_ID]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_a_csr_whose_signature_does_not_verify_is_refused() -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    good = _csr(_p256(), cn="aaaaa")
    der = x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER)
    at = der.find(b"aaaaa")
    tampered = der[:at] + b"bbbbb" + der[at + 5 :]
    forged = x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(X509CaError, match="proof of possession"):
        ca.issue(forged, spiffe_id=AGENT_ID, validity_seconds=60)


@pytest.mark.parametrize(
    "subject_key",
    [
        lambda: ed25519.Ed25519PrivateKey.generate().public_key(),
        lambda: ec.generate_private_key(ec.SECP384R1()).public_key(),
        lambda: rsa.generate_private_key(65537, 2048).public_key(),
    ],
    ids=["ed25519", "p384", "rsa2048"],
)
def test_accepted_subject_key_types(subject_key: object) -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    key = subject_key()  # type: ignore[operator]
    assert _load(ca.issue(key, spiffe_id=AGENT_ID, validity_seconds=60)).public_key() == key


@pytest.mark.parametrize(
    ("subject_key", "reason"),
    [
        (lambda: rsa.generate_private_key(65537, 1024).public_key(), "RSA key of 1024 bits"),
        (lambda: ec.generate_private_key(ec.SECP256K1()).public_key(), "secp256k1"),
        (lambda: dsa.generate_private_key(2048).public_key(), "not accepted"),
        (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "malformed CSR"),
        (lambda: b"x" * 20_000, "too large"),
    ],
    ids=["rsa1024", "secp256k1", "dsa", "garbage-csr", "huge-csr"],
)
def test_refused_subject_keys(subject_key: object, reason: str) -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    with pytest.raises(X509CaError, match=reason):
        ca.issue(subject_key(), spiffe_id=AGENT_ID, validity_seconds=60)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("spiffe_id", "reason"),
    [
        ("spiffe://other.example/agent/x/task/y", "trust domain 'other.example'"),
        ("spiffe://tether.example", "names a workload"),
        ("spiffe://tether.example/agent/x?admin=1", "path segments"),
    ],
)
def test_refused_spiffe_ids(spiffe_id: str, reason: str) -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    with pytest.raises(X509CaError, match=reason):
        ca.issue(_p256().public_key(), spiffe_id=spiffe_id, validity_seconds=60)


@pytest.mark.parametrize("seconds", [0, -1, 3601, True, 1.5])
def test_validity_outside_the_cap_is_refused(seconds: int) -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    with pytest.raises(X509CaError, match="validity_seconds"):
        ca.issue(_p256().public_key(), spiffe_id=AGENT_ID, validity_seconds=seconds)


def test_a_certificate_never_outlives_its_ca() -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW, validity=timedelta(minutes=5))
    with pytest.raises(X509CaError, match="outlive"):
        ca.issue(_p256().public_key(), spiffe_id=AGENT_ID, validity_seconds=600)


def test_ca_is_p256_constrained_to_its_trust_domain_and_round_trips() -> None:
    ca = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    ext = ca.ca_cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is True
    constraints = ext.get_extension_for_class(x509.NameConstraints)
    assert constraints.critical
    assert constraints.value.permitted_subtrees == [
        x509.UniformResourceIdentifier("tether.example")
    ]
    assert isinstance(ca.ca_key.curve, ec.SECP256R1)
    loaded = X509ClientCA.from_pem(ca.private_key_bytes(), ca.ca_cert_pem(), clock=lambda: NOW)
    assert loaded.trust_domain == "tether.example"
    assert b"PRIVATE" not in repr(loaded).encode()
    cert = _load(loaded.issue(_p256().public_key(), spiffe_id=AGENT_ID, validity_seconds=60))
    cert.verify_directly_issued_by(ca.ca_cert)


def test_a_ca_key_that_does_not_match_its_certificate_is_refused() -> None:
    one = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    two = X509ClientCA.generate("tether.example", clock=lambda: NOW)
    with pytest.raises(X509CaError, match="does not match"):
        X509ClientCA.from_pem(one.private_key_bytes(), two.ca_cert_pem(), clock=lambda: NOW)
    with pytest.raises(IssuanceError, match="does not load"):
        X509ClientCA.from_pem(b"junk", one.ca_cert_pem(), clock=lambda: NOW)
    rsa_key = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(X509CaError, match="P-256"):
        X509ClientCA.from_pem(rsa_key, one.ca_cert_pem(), clock=lambda: NOW)


# --- real mTLS handshakes ---------------------------------------------------------------------


@dataclass
class ServerSide:
    accepted: bool = False
    peer: Any = None
    error: str = ""


def _server_identity(tmp_path: Path) -> tuple[Path, Path]:
    key = _p256()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "front-end")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "server.pem", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _mtls(
    tmp_path: Path,
    trusted_ca: X509ClientCA,
    client_cert: str,
    client_key: ec.EllipticCurvePrivateKey,
) -> ServerSide:
    """One TLS 1.3 handshake on loopback; the server requires a client cert from ``trusted_ca``."""
    server_cert, server_key = _server_identity(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_cert, server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cadata=trusted_ca.ca_cert_pem().decode())
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(server_cert)
    (tmp_path / "client.pem").write_text(client_cert)
    (tmp_path / "client.key").write_bytes(
        client_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    client_ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    outcome = ServerSide()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                outcome.peer = tls.getpeercert()
                outcome.accepted = True
                tls.sendall(b"hello")
        except (ssl.SSLError, OSError) as exc:
            outcome.error = str(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        # TLS 1.3: the server's refusal of the client certificate may arrive only after the
        # client's side of the handshake completed, on the first read.
        with (
            contextlib.suppress(ssl.SSLError, OSError),
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.recv(5)
    finally:
        thread.join(timeout=10)
        listener.close()
    return outcome


def test_mtls_handshake_succeeds_and_the_server_reads_the_spiffe_id(
    ca: X509ClientCA, tmp_path: Path
) -> None:
    key = _p256()
    cert = ca.issue(key.public_key(), spiffe_id=AGENT_ID, validity_seconds=300)
    outcome = _mtls(tmp_path, ca, cert, key)
    assert outcome.accepted, outcome.error
    assert outcome.peer is not None
    assert outcome.peer["subjectAltName"] == (("URI", AGENT_ID),)
    assert outcome.peer["subject"] == ()


def test_mtls_refuses_an_expired_certificate(ca: X509ClientCA, tmp_path: Path) -> None:
    past = X509ClientCA(ca.ca_key, ca.ca_cert, lambda: datetime.now(UTC) - timedelta(hours=2))
    key = _p256()
    cert = past.issue(key.public_key(), spiffe_id=AGENT_ID, validity_seconds=3600)
    outcome = _mtls(tmp_path, ca, cert, key)
    assert not outcome.accepted
    assert "certificate has expired" in outcome.error


def test_mtls_refuses_a_certificate_from_a_foreign_ca(ca: X509ClientCA, tmp_path: Path) -> None:
    foreign = X509ClientCA.generate("tether.example", clock=lambda: datetime.now(UTC))
    key = _p256()
    cert = foreign.issue(key.public_key(), spiffe_id=AGENT_ID, validity_seconds=300)
    outcome = _mtls(tmp_path, ca, cert, key)
    assert not outcome.accepted
    assert "unable to get local issuer certificate" in outcome.error


def test_mtls_refuses_a_leaf_outside_the_ca_name_constraint(
    ca: X509ClientCA, tmp_path: Path
) -> None:
    """A leaf mis-issued for another trust domain fails path validation at the verifier."""
    key = _p256()
    good = _load(ca.issue(key.public_key(), spiffe_id=AGENT_ID, validity_seconds=300))
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(good.not_valid_before_utc)
        .not_valid_after(good.not_valid_after_utc)
    )
    for extension in good.extensions:
        if isinstance(extension.value, x509.SubjectAlternativeName):
            san = x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier("spiffe://other/agent/x")]
            )
            forged = forged.add_extension(san, critical=True)
        else:
            forged = forged.add_extension(extension.value, extension.critical)
    pem = forged.sign(ca.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    outcome = _mtls(tmp_path, ca, pem.decode(), key)
    assert not outcome.accepted
    assert "name constraint" in outcome.error or "permitted subtree" in outcome.error
