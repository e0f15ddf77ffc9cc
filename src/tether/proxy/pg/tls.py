"""TLS for the broker's listener and for its connections to targets.

Security decisions:

* **Listener.** TLS 1.2 or later. The certificate comes from the configuration, or is
  generated at first start (ECDSA P-256, ten years, ``localhost``/``127.0.0.1``/``::1`` and
  the listen host as names) into the data directory with its key mode 0600, and reused
  afterwards. Client certificates are *requested*, never required, and verified against
  Tether's X.509 client CA: a certificate-bound token is checked against the certificate the
  handshake verified (RFC 8705).
* **Upstream.** ``verify-full`` checks the chain (the target's ``ca_bundle`` or the system
  store) and the host name; ``verify-ca`` the chain only; ``require`` encrypts without
  checking (documented as such); ``disable`` is plain TCP.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE = "pg-broker.crt"
KEY_FILE = "pg-broker.key"


def ensure_certificate(data_dir: Path, host: str) -> tuple[Path, Path]:
    """The generated certificate and key in ``data_dir``, made on first use."""
    cert_path, key_path = data_dir / CERT_FILE, data_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    data_dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    for literal in {"127.0.0.1", "::1", host}:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(literal)))
        except ValueError:
            names.append(x509.DNSName(literal))
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether pg broker")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


class ListenerCertificateError(Exception):
    """The listener's certificate or key cannot be used; the message names the files."""


def server_context(cert: Path, key: Path, client_ca_pem: bytes | None) -> ssl.SSLContext:
    """The listener's context: our certificate; client certificates optional, verified.
    An encrypted key is refused: without ``password``, OpenSSL asked for its passphrase on
    the terminal and the node's start waited there."""
    for path in (cert, key):
        if not path.is_file():
            raise ListenerCertificateError(f"{path}: no such file")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except ssl.SSLError as error:
        raise ListenerCertificateError(
            f"{cert} and {key}: not a PEM certificate chain and its unencrypted private key "
            f"({error.reason or error})"
        ) from None
    except OSError as error:
        raise ListenerCertificateError(
            f"cannot read {cert} and {key}: {error.strerror or error}"
        ) from None
    if client_ca_pem is not None:
        context.load_verify_locations(cadata=client_ca_pem.decode("ascii"))
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def upstream_context(tls_mode: str, ca_bundle: str | None) -> ssl.SSLContext | None:
    """The context for a target's ``tls_mode`` (None for ``disable``)."""
    if tls_mode == "disable":
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls_mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if ca_bundle is not None:
        context.load_verify_locations(cadata=ca_bundle)
    else:
        context.load_default_certs()
    context.check_hostname = tls_mode == "verify-full"
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _no_passphrase() -> bytes:
    return b""
