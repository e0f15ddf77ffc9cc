"""Signed checkpoints: Tether's signature over a position of the chain.

A checkpoint says "event ``seq`` had hash ``hash`` at ``time``", signed with Ed25519 by
the node's active access-token signing key (its ``kid``, the RFC 7638 thumbprint of the
public JWK, is recorded). The signed bytes are
:func:`tether.audit.canonical.checkpoint_statement`.

Security decisions:

* **Why sign at all.** Whoever can write the database can recompute every hash of a
  rewritten chain; they cannot sign without the private key, which the store holds only
  encrypted under the master key. A rewrite, or a truncation of checkpointed events, is
  therefore caught by ``tether audit verify``.
* **Public keys come from ``signing_keys`` and must match their kid.** The verifier
  recomputes the thumbprint of the stored public JWK and refuses a key whose thumbprint
  is not its kid, so a row cannot be pointed at another key. Any state of the key
  (active, previous, retired) verifies what it signed while it was active.
* **The same key as access tokens**, not a new one: its rotation, storage and
  publication (JWKS) already exist, and an auditor who trusts Tether's JWKS can verify
  checkpoints offline. The statement is JSON with fields no JWS header has, so a
  checkpoint signature can never pass as a token signature or the reverse.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.ext.asyncio import AsyncConnection

from tether.audit.canonical import checkpoint_statement, prune_statement
from tether.audit.store import Checkpoint, Prune
from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.identity.keys import SigningKey, jwk_thumbprint
from tether.store import keys as stored

# Returns the key to sign with now: the key ring's active key, read at each checkpoint.
Signer = Callable[[], SigningKey]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_checkpoint(key: SigningKey, seq: int, hash: str, time: datetime) -> Checkpoint:
    """A checkpoint of event ``seq`` (hash ``hash``) made at ``time`` with ``key``."""
    signature = key.sign(checkpoint_statement(seq, hash, time))
    return Checkpoint(seq=seq, hash=hash, time=time, kid=key.kid, signature=b64url(signature))


def public_key_from_jwk(kid: str, jwk: Mapping[str, Any]) -> Ed25519PublicKey:
    """The Ed25519 key of an OKP JWK whose thumbprint is ``kid``; ``ValueError`` if not."""
    if jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        raise ValueError("not an Ed25519 JWK")
    if jwk_thumbprint(jwk) != kid:
        raise ValueError("the stored public key does not match its kid")
    try:
        raw = b64url_decode(str(jwk["x"]))
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError):
        raise ValueError("malformed Ed25519 public key") from None


async def verification_keys(
    conn: AsyncConnection, cipher: EnvelopeCipher | None = None
) -> dict[str, Ed25519PublicKey | str]:
    """Every access-token key in the store by kid: its public key, or why it is unusable.

    With ``cipher`` (the node's master key) a key counts only if its stored private part
    opens under it, for its own kid, and is the private half of its stored public key: a
    key that someone with write access to the database added themselves cannot be sealed
    so, so checkpoints they re-signed with it do not verify. Without it the keys are taken
    as the database holds them (the report says so)."""
    keys: dict[str, Ed25519PublicKey | str] = {}
    for row in await stored.list_signing_keys(conn, "access-token"):
        try:
            public = public_key_from_jwk(row.kid, json.loads(row.public))
        except (ValueError, TypeError) as error:
            keys[row.kid] = str(error)
            continue
        if cipher is not None and not _sealed_by(cipher, row, public):
            keys[row.kid] = "not sealed by this node's master key (a key added to the database?)"
            continue
        keys[row.kid] = public
    return keys


def _sealed_by(cipher: EnvelopeCipher, row: stored.StoredKey, public: Ed25519PublicKey) -> bool:
    """Whether ``row``'s private part opens under ``cipher`` and matches ``public``."""
    try:
        private = cipher.decrypt(
            row.private_encrypted, purpose=stored.private_key_purpose(row.purpose), name=row.kid
        )
        derived = Ed25519PrivateKey.from_private_bytes(private).public_key()
    except (DecryptionError, ValueError, TypeError):
        return False
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    return derived.public_bytes(*raw) == public.public_bytes(*raw)


def sign_prune(
    key: SigningKey, seq: int, hash: str, time: datetime, archive_sha256: str, events: int
) -> Prune:
    """A prune marker of events up to ``seq`` (hash ``hash``), made at ``time`` with ``key``."""
    signature = key.sign(prune_statement(seq, hash, time, archive_sha256, events))
    return Prune(seq, hash, time, archive_sha256, events, key.kid, b64url(signature))


def prune_signature_valid(key: Ed25519PublicKey, prune: Prune) -> bool:
    """Whether ``prune.signature`` is ``key``'s signature of its statement."""
    statement = prune_statement(
        prune.seq, prune.hash, prune.time, prune.archive_sha256, prune.events
    )
    try:
        key.verify(b64url_decode(prune.signature), statement)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def signature_valid(key: Ed25519PublicKey, checkpoint: Checkpoint) -> bool:
    """Whether ``checkpoint.signature`` is ``key``'s signature of its statement."""
    try:
        signature = b64url_decode(checkpoint.signature)
        key.verify(
            signature, checkpoint_statement(checkpoint.seq, checkpoint.hash, checkpoint.time)
        )
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True
