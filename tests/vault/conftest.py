"""A real store (SQLite and PostgreSQL through ``store_url``) with the vault on it."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.store import Store
from tether.vault.secrets import SecretStore
from tether.vault.targets import TargetStore

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


class Ticker:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Clock:
    """A wall clock the test moves."""

    def __init__(self) -> None:
        self.at = T0

    def __call__(self) -> datetime:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)


@dataclass
class Vault:
    store: Store
    cipher: EnvelopeCipher
    clock: Clock
    ticker: Ticker
    secrets: SecretStore
    targets: TargetStore

    def other_node(self) -> tuple[SecretStore, TargetStore]:
        """Stores as a second node sharing the database would have them."""
        return (
            SecretStore(self.store.engine, self.cipher, clock=self.clock, monotonic=self.ticker),
            TargetStore(
                self.store.engine, self.cipher.sealer, clock=self.clock, monotonic=self.ticker
            ),
        )


@pytest.fixture
async def vault(store_url: str) -> AsyncIterator[Vault]:
    store = await Store.open(store_url)
    cipher = EnvelopeCipher(MasterKey(secrets.token_bytes(32), "test"))
    clock, ticker = Clock(), Ticker()
    try:
        yield Vault(
            store,
            cipher,
            clock,
            ticker,
            SecretStore(store.engine, cipher, clock=clock, monotonic=ticker),
            TargetStore(store.engine, cipher.sealer, clock=clock, monotonic=ticker),
        )
    finally:
        await store.close()


def ca_pem() -> str:
    """A self-signed CA certificate, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "test ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def ssh_public_key(directory: Path) -> str:
    """A fresh Ed25519 OpenSSH public key line, made by ``ssh-keygen``."""
    path = directory / f"k{secrets.token_hex(4)}"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
        check=True,
        capture_output=True,
    )
    return path.with_suffix(".pub").read_text().strip()
