"""Tether's own keys, kept in the store encrypted under the master key.

Each key is one ``signing_keys`` row whose private part is an envelope (AES-256-GCM data
key wrapped by a key derived from the master key) bound to the key's purpose and kid, so a
ciphertext cannot be moved to another row. The store refuses plaintext private keys.

On start, :func:`load_or_create` reads the access-token key ring (the active key and the
previous keys still inside their overlap window) and the CAs agents get certificates from
(the SSH agent-login CA and the X.509 client CA), creating any that do not exist yet. The
target-facing SSH CA is not one of them: it lives in the vault (:mod:`tether.vault.ssh_certs`).
:func:`rotate_access_key` adds a new active key; the old one keeps verifying for the
overlap (the longest token lifetime), then is retired.

Every key row is sealed (:mod:`tether.crypto.seal`, migration 0020). A previous key whose
row does not verify is left out of the ring (what it signed is refused); an active one
stops the node from starting (:class:`KeysUnverified`): it neither signs with a key whose
row it cannot trust nor replaces it on its own, which would cut every agent off on a
database that was merely upgraded without ``tether store seal``.

A new database (no signing key at all) also gets its empty revocation ledger here, in the
transaction that makes its first keys (:mod:`tether.store.revocation_ledger`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.seal import RowSealer
from tether.identity.keys import KeyRing, RetiredKey, SigningKey
from tether.identity.sshca import CaPurpose, SshUserCA
from tether.identity.x509ca import X509ClientCA
from tether.store import keys as stored
from tether.store import revocation_ledger

_PURPOSE: stored.KeyPurpose = "access-token"
_ACTIVE: tuple[stored.KeyState, ...] = ("active",)


@dataclass
class TetherKeys:
    """The keys a node signs agents' credentials with: the token key ring and the CAs."""

    ring: KeyRing
    ssh_user_ca: SshUserCA
    x509_ca: X509ClientCA


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _seal(cipher: EnvelopeCipher, purpose: str, kid: str, private: bytes) -> bytes:
    return cipher.encrypt(private, purpose=stored.private_key_purpose(purpose), name=kid)


def _open(cipher: EnvelopeCipher, row: stored.StoredKey) -> bytes:
    purpose = stored.private_key_purpose(row.purpose)
    return cipher.decrypt(row.private_encrypted, purpose=purpose, name=row.kid)


def _raw(key: SigningKey) -> bytes:
    return key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def _row(cipher: EnvelopeCipher, key: SigningKey, now: datetime) -> stored.StoredKey:
    return stored.StoredKey(
        kid=key.kid,
        purpose=_PURPOSE,
        algorithm="EdDSA",
        public=json.dumps(key.public_jwk(), sort_keys=True),
        private_encrypted=_seal(cipher, _PURPOSE, key.kid, _raw(key)),
        created_at=now,
        active_from=now,
    )


def _signing_key(cipher: EnvelopeCipher, row: stored.StoredKey) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(_open(cipher, row))
    return SigningKey.from_private_key(private, _ts(row.created_at))


class KeysUnverified(Exception):
    """The active key of a purpose is in the store but its row's seal does not verify:
    the node refuses to start rather than sign with, or replace, a key it cannot trust."""


async def _admitted(
    conn: AsyncConnection,
    cipher: EnvelopeCipher,
    purpose: stored.KeyPurpose,
    states: tuple[stored.KeyState, ...],
) -> list[stored.StoredKey]:
    """The keys of ``purpose`` in ``states`` whose seal verifies; ``KeysUnverified`` when
    there is no verified active key but an active row that does not verify."""
    keys = await stored.sealed_signing_keys(conn, cipher.sealer, purpose, states)
    active = any(key.state == "active" for key in keys.admitted)
    refused = [key for key in keys.refused if key.state == "active"]
    if refused and not active:
        _open(cipher, refused[0])  # another master key than the database's: say that instead
        raise KeysUnverified(
            f"the active {purpose} key {refused[0].kid!r} does not verify: its row was written "
            "before migration 0020 (adopt it with `tether store seal`), changed outside "
            "Tether, or put back older than this node saw (docs/vault.md, Tampering with the "
            "database)"
        )
    return keys.admitted


async def _load_ring(
    conn: AsyncConnection, cipher: EnvelopeCipher, now: datetime, overlap: float
) -> KeyRing | None:
    rows = await _admitted(conn, cipher, _PURPOSE, ("active", "previous"))
    active = [r for r in rows if r.state == "active"]
    if not active:
        return None
    previous = tuple(
        RetiredKey(_signing_key(cipher, r), _ts(r.active_from), _ts(r.retire_after))
        for r in rows
        if r.state == "previous" and r.retire_after is not None and r.retire_after > now
    )
    return KeyRing(_signing_key(cipher, active[0]), previous, overlap=overlap)


async def _load_ca(
    conn: AsyncConnection,
    cipher: EnvelopeCipher,
    purpose: stored.KeyPurpose,
    now: datetime,
    make: Callable[[], tuple[str, str, bytes, str]],
) -> tuple[bytes, str]:
    """(private bytes, public) of the CA of ``purpose``, created by ``make`` if missing."""
    rows = await _admitted(conn, cipher, purpose, _ACTIVE)
    if rows:
        return _open(cipher, rows[0]), rows[0].public
    kid, public, private, algorithm = make()
    row = stored.StoredKey(
        kid=kid,
        purpose=purpose,
        algorithm=algorithm,
        public=public,
        private_encrypted=_seal(cipher, purpose, kid, private),
        created_at=now,
        active_from=now,
    )
    await stored.insert_signing_key(conn, cipher.sealer, row)
    return private, public


async def active_access_key(conn: AsyncConnection, cipher: EnvelopeCipher) -> SigningKey | None:
    """The active access-token key, its row verified and opened under ``cipher`` (None on a
    database no node has started on): what tools sign with offline, as the node would
    (``tether audit prune``). ``KeysUnverified`` like :func:`load_or_create`."""
    rows = await _admitted(conn, cipher, _PURPOSE, ("active",))
    return _signing_key(cipher, rows[0]) if rows else None


async def load_or_create(
    engine: AsyncEngine,
    cipher: EnvelopeCipher,
    *,
    clock: Callable[[], datetime],
    overlap: float,
    trust_domain: str,
) -> TetherKeys:
    """The node's keys, creating those that do not exist yet (first start)."""
    now = clock()
    async with engine.begin() as conn:
        if not await stored.any_signing_key(conn):  # a new database: its revocation ledger
            await revocation_ledger.create_if_absent(conn, cipher.sealer)
        ring = await _load_ring(conn, cipher, now, overlap)
        if ring is None:
            ring = KeyRing.generate(_ts(now), overlap=overlap)
            await stored.insert_signing_key(conn, cipher.sealer, _row(cipher, ring.active, now))
        ssh_user = await _load_ssh_ca(conn, cipher, clock)
        x509 = await _load_x509_ca(conn, cipher, clock, trust_domain)
    return TetherKeys(ring, ssh_user, x509)


async def _load_ssh_ca(
    conn: AsyncConnection, cipher: EnvelopeCipher, clock: Callable[[], datetime]
) -> SshUserCA:
    """The agent-login CA (store purpose ``ssh-user-ca``)."""

    def make() -> tuple[str, str, bytes, str]:
        ca = SshUserCA.generate(clock=clock, purpose=CaPurpose.AGENT_LOGIN)
        public = ca.ca_public_key_openssh()
        kid = "ssh-user-ca:" + hashlib.sha256(public.encode()).hexdigest()[:24]
        return kid, public, ca.private_key_bytes(), "ssh-ed25519"

    private, _public = await _load_ca(conn, cipher, "ssh-user-ca", clock(), make)
    return SshUserCA.from_private_key_bytes(private, clock=clock, purpose=CaPurpose.AGENT_LOGIN)


async def _load_x509_ca(
    conn: AsyncConnection,
    cipher: EnvelopeCipher,
    clock: Callable[[], datetime],
    trust_domain: str,
) -> X509ClientCA:
    def make() -> tuple[str, str, bytes, str]:
        ca = X509ClientCA.generate(trust_domain, clock=clock)
        pem = ca.ca_cert_pem()
        kid = "x509-ca:" + hashlib.sha256(pem).hexdigest()[:24]
        return kid, pem.decode(), ca.private_key_bytes(), "ES256"

    private, public = await _load_ca(conn, cipher, "x509-ca", clock(), make)
    return X509ClientCA.from_pem(private, public.encode(), clock=clock)


async def rotate_access_key(
    engine: AsyncEngine,
    cipher: EnvelopeCipher,
    ring: KeyRing,
    now: datetime,
    *,
    sealer: RowSealer | None = None,
) -> SigningKey:
    """A new active token key; the old one verifies for the ring's overlap, then retires.
    ``sealer``: the node's (it knows the revisions the node admitted), else the cipher's."""
    key = ring.rotate(_ts(now))
    async with engine.begin() as conn:
        await stored.rotate_signing_key(
            conn, sealer or cipher.sealer, _row(cipher, key, now),
            now + timedelta(seconds=ring.overlap),
        )  # fmt: skip
    return key
