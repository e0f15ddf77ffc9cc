"""Short-lived X.509 client certificates (SPIFFE X509-SVID style) for mTLS to Tether's front-ends.

The CA key is ECDSA P-256: every TLS stack in use (OpenSSL, BoringSSL, Go, Java, rustls, NSS)
accepts P-256 for client authentication, whereas Ed25519 certificates are still refused by some
(older Java, several HSM-backed and FIPS builds). The CA certificate carries a critical name
constraint permitting only URIs of its own trust domain, so even a mis-issued leaf naming another
trust domain fails path validation at the verifier.

A leaf names its holder only by one URI SAN, the SPIFFE ID ``spiffe://<trust-domain>/agent/<id>/
task/<task>``; its subject is empty (the SAN is then critical, RFC 5280 4.2.1.6), so no verifier can
fall back on a common name. It is good for TLS client authentication only (key usage
``digitalSignature``, extended key usage ``clientAuth``, ``CA:FALSE``), has a random 128-bit serial,
and lives minutes: revocation is by expiry, no CRL is published. From a CSR, only the public key is
used, after checking the CSR's signature (proof that the requester holds the private key); its
subject and requested extensions are ignored.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeAlias

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tether.identity.errors import IssuanceError

Clock = Callable[[], datetime]

#: notBefore is set this far before "now" so that a front-end whose clock is slightly behind does
#: not refuse a certificate issued a second ago.
BACKDATE_SECONDS = 60
#: A client certificate lives at most as long as the task's access token.
MAX_VALIDITY_SECONDS = 3600
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192
_MAX_SPIFFE_ID = 2048
_MAX_CSR = 16_384
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

SubjectKey: TypeAlias = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


class X509CaError(IssuanceError):
    """A certificate request, a SPIFFE ID or a CA key was refused; ``reason`` says why."""

    code = "x509_ca_refused"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SpiffeId:
    """A parsed SPIFFE ID; ``path`` is empty for the trust domain's own ID."""

    trust_domain: str
    path: str

    def __str__(self) -> str:
        return f"spiffe://{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()


def parse_spiffe_id(value: str) -> SpiffeId:
    """Parse a SPIFFE ID strictly (SPIFFE-ID spec, section 2).

    ``spiffe://`` in lower case, a trust domain of ``[a-z0-9._-]`` (so no port, no user info, no
    upper case that could alias another domain), then ``/``-separated segments of
    ``[A-Za-z0-9._-]``, none empty, ``.`` or ``..``. No query, fragment or percent-encoding: one
    identity has exactly one spelling, so comparing strings compares identities.
    """
    if not isinstance(value, str) or len(value.encode("utf-8", "replace")) > _MAX_SPIFFE_ID:
        raise X509CaError("SPIFFE ID must be a string of at most 2048 bytes")
    rest = value.removeprefix("spiffe://")
    if rest == value:
        raise X509CaError("SPIFFE ID must start with 'spiffe://'")
    domain, slash, path = rest.partition("/")
    if not _TRUST_DOMAIN.fullmatch(domain):
        raise X509CaError("SPIFFE trust domain must be 1..255 characters of [a-z0-9._-]")
    if not slash:
        return SpiffeId(domain, "")
    for segment in path.split("/"):
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise X509CaError(
                "SPIFFE ID path segments must be non-empty [A-Za-z0-9._-], not . or .."
            )
    return SpiffeId(domain, "/" + path)


def is_trust_domain(domain: str) -> bool:
    """Whether ``domain`` is a bare SPIFFE trust domain name."""
    try:
        return not parse_spiffe_id(f"spiffe://{domain}").path
    except X509CaError:
        return False


def agent_spiffe_id(trust_domain: str, *, agent: str, task: str) -> SpiffeId:
    """``spiffe://<trust-domain>/agent/<agent>/task/<task>``, validated."""
    return parse_spiffe_id(f"spiffe://{trust_domain}/agent/{agent}/task/{task}")


@dataclass(frozen=True, slots=True)
class X509ClientCA:
    """Tether's internal client-certificate CA for one trust domain."""

    ca_key: ec.EllipticCurvePrivateKey = field(repr=False)
    ca_cert: x509.Certificate
    clock: Clock = field(repr=False)
    trust_domain: str = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.ca_key.curve, ec.SECP256R1):
            raise X509CaError("the CA key must be ECDSA P-256")
        if self.ca_key.public_key() != self.ca_cert.public_key():
            raise X509CaError("the CA key does not match the CA certificate")
        object.__setattr__(self, "trust_domain", _trust_domain_of(self.ca_cert))

    @classmethod
    def generate(
        cls, trust_domain: str, *, clock: Clock, validity: timedelta = timedelta(days=365)
    ) -> X509ClientCA:
        """A new self-signed CA for ``trust_domain`` with a fresh P-256 key."""
        domain = parse_spiffe_id(f"spiffe://{trust_domain}")
        key = ec.generate_private_key(ec.SECP256R1())
        now = clock()
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Tether"),
                x509.NameAttribute(NameOID.COMMON_NAME, f"Tether agent CA {trust_domain}"),
            ]
        )
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(_random_serial())
            .not_valid_before(now - timedelta(seconds=BACKDATE_SECONDS))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(domain))]),
                critical=False,
            )
            .add_extension(
                x509.NameConstraints(
                    permitted_subtrees=[x509.UniformResourceIdentifier(domain.trust_domain)],
                    excluded_subtrees=None,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, clock)

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes, *, clock: Clock) -> X509ClientCA:
        """Load a CA written by :meth:`private_key_bytes` and :meth:`ca_cert_pem`."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError) as exc:
            raise X509CaError(f"CA key or certificate does not load: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise X509CaError("the CA key must be ECDSA P-256")
        return cls(key, cert, clock)

    def private_key_bytes(self) -> bytes:
        """The CA key as unencrypted PKCS#8 PEM: the caller encrypts it at rest."""
        return self.ca_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def ca_cert_pem(self) -> bytes:
        """The CA certificate, for the front-ends' client-certificate trust store."""
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def issue(
        self, subject_key: str | bytes | SubjectKey, *, spiffe_id: str, validity_seconds: int
    ) -> str:
        """Sign a client certificate for ``spiffe_id``; ``subject_key`` is a CSR PEM or a key."""
        identity = self._check_spiffe_id(spiffe_id)
        public_key = _subject_public_key(subject_key)
        now = self.clock()
        not_after = now + timedelta(seconds=_check_validity(validity_seconds))
        if not_after > self.ca_cert.not_valid_after_utc:
            raise X509CaError("the certificate would outlive the CA certificate")
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_cert.subject)
            .public_key(public_key)
            .serial_number(_random_serial())
            .not_valid_before(now - timedelta(seconds=BACKDATE_SECONDS))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(str(identity))]),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_id(), critical=False)
            .sign(self.ca_key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")

    def _check_spiffe_id(self, spiffe_id: str) -> SpiffeId:
        identity = parse_spiffe_id(spiffe_id)
        if identity.trust_domain != self.trust_domain:
            raise X509CaError(
                f"SPIFFE ID is in trust domain {identity.trust_domain!r}, "
                f"this CA signs for {self.trust_domain!r}"
            )
        if not identity.path:
            raise X509CaError("a client certificate names a workload, not the trust domain")
        return identity

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        ski = self.ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def spiffe_ids_of(cert_pem: str | bytes) -> list[str]:
    """The URI SANs of a PEM certificate (what a front-end reads back after the handshake)."""
    data = cert_pem.encode("ascii") if isinstance(cert_pem, str) else cert_pem
    try:
        cert = x509.load_pem_x509_certificate(data)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise X509CaError(f"certificate has no readable SAN: {exc}") from None
    return san.value.get_values_for_type(x509.UniformResourceIdentifier)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _random_serial() -> int:
    """128 random bits; zero is not a valid serial (RFC 5280 4.1.2.2), so draw again."""
    while not (serial := secrets.randbits(128)):
        pass
    return serial


def _check_validity(seconds: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, int):
        raise X509CaError("validity_seconds must be an integer")
    if not 0 < seconds <= MAX_VALIDITY_SECONDS:
        raise X509CaError(f"validity_seconds must be in 1..{MAX_VALIDITY_SECONDS}")
    return seconds


def _subject_public_key(subject_key: str | bytes | SubjectKey) -> SubjectKey:
    """The key to certify: from a CSR whose signature checks, or given directly."""
    if isinstance(subject_key, str | bytes):
        key = _key_from_csr(subject_key.encode() if isinstance(subject_key, str) else subject_key)
    else:
        key = subject_key
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
            raise X509CaError(f"EC curve {key.curve.name} is not accepted: P-256 or P-384")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if not MIN_RSA_BITS <= key.key_size <= MAX_RSA_BITS:
            raise X509CaError(f"RSA key of {key.key_size} bits refused")
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise X509CaError(f"key type {type(key).__name__} is not accepted")


def _key_from_csr(pem: bytes) -> object:
    if len(pem) > _MAX_CSR:
        raise X509CaError("CSR too large")
    try:
        csr = x509.load_pem_x509_csr(pem)
        valid = csr.is_signature_valid
        key: object = csr.public_key()
    except (ValueError, TypeError, x509.UnsupportedGeneralNameType) as exc:
        raise X509CaError(f"malformed CSR: {exc}") from None
    if not valid:
        raise X509CaError("CSR signature does not verify: no proof of possession of the key")
    return key


def _trust_domain_of(cert: x509.Certificate) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise X509CaError("CA certificate names no trust domain (URI SAN)") from None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise X509CaError("CA certificate must name exactly one trust domain")
    identity = parse_spiffe_id(uris[0])
    if identity.path:
        raise X509CaError("CA certificate URI SAN must be a trust domain ID")
    return identity.trust_domain
