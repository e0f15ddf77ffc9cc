"""Tether's signing keys: Ed25519 (JWS ``EdDSA``), a key ring with rotation, the JWKS.

A ``SigningKey`` is an Ed25519 private key with its ``kid`` (the RFC 7638 thumbprint of
its public JWK) and creation time. A ``KeyRing`` holds one *active* key, which signs, and
*previous* keys, which still verify until ``retired_at + overlap``.

Security decisions:

* **Ed25519 only** for Tether's own tokens: deterministic signatures (no nonce to get
  wrong), small keys, fast verification, one curve so no parameter choices.
* **The kid is the key's thumbprint**, recomputed whenever a key is built or imported;
  a stored kid that does not match its key is refused. A kid can thus never be pointed
  at another key, and two nodes that share a key agree on its kid.
* **Overlap, then gone.** ``rotate(now)`` makes a new active key; the old one verifies
  for ``overlap`` seconds more, then is refused even for tokens whose ``exp`` is later.
  The issuer refuses a ``max_lifetime`` above the overlap, so no token it issues can
  outlive the key that verifies it. ``remove(kid)`` drops a previous key at once, for a
  key that leaked; the verifier's cache checks the key ring on every hit, so tokens
  signed by that key stop working immediately.
* **Readers never lock.** The ring's state is an immutable snapshot replaced whole
  under a lock by ``rotate``/``remove``; verification reads one reference.
* **Private keys leave only encrypted** (``export_encrypted``: envelope encryption under
  the master key, bound to purpose ``identity.signing-keys`` and the ring's name), for
  the store to persist. ``jwks()`` publishes public keys only.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from tether.crypto.envelope import EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity import jose
from tether.identity.errors import KeyRingError

DEFAULT_OVERLAP: Final = 3600.0
EXPORT_PURPOSE: Final = "identity.signing-keys"
_EXPORT_VERSION: Final = 1
_THUMBPRINT_MEMBERS: Final = {
    "OKP": ("crv", "kty", "x"),
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "oct": ("k", "kty"),
}


def jwk_thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint of a JWK, base64url: the required members only, sorted,
    no whitespace. ``ValueError`` for an unknown key type or a missing member."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise ValueError("unsupported JWK key type")
    required = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise ValueError(f"JWK member {name} missing")
        required[name] = value
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return jose.b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 signing key; ``kid`` must be the thumbprint of its public JWK."""

    kid: str
    created_at: float
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)
    public_key: Ed25519PublicKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "public_key", self.private_key.public_key())
        if jwk_thumbprint(jose.public_jwk(self.public_key)) != self.kid:
            raise KeyRingError("a signing key's kid must be its JWK thumbprint")

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey, created_at: float) -> SigningKey:
        """Wrap an existing Ed25519 key, computing its kid."""
        return cls(jwk_thumbprint(jose.public_jwk(key)), created_at, key)

    @classmethod
    def generate(cls, now: float) -> SigningKey:
        """A new random key created at ``now``."""
        return cls.from_private_key(Ed25519PrivateKey.generate(), now)

    def sign(self, data: bytes) -> bytes:
        """The Ed25519 signature of ``data``."""
        return self.private_key.sign(data)

    def public_jwk(self) -> dict[str, str]:
        """The public JWK as published in the JWKS (with ``kid``, ``alg``, ``use``)."""
        return {**jose.public_jwk(self.public_key), "kid": self.kid, "alg": "EdDSA", "use": "sig"}


@dataclass(frozen=True)
class RetiredKey:
    """A previous key: it signs no more, and verifies until ``accepted_until``."""

    key: SigningKey
    retired_at: float
    accepted_until: float


@dataclass(frozen=True)
class _State:
    active: SigningKey
    previous: tuple[RetiredKey, ...]
    verify_until: Mapping[str, tuple[Ed25519PublicKey, float]]

    @classmethod
    def of(cls, active: SigningKey, previous: Iterable[RetiredKey]) -> _State:
        kept = tuple(previous)
        table = {r.key.kid: (r.key.public_key, r.accepted_until) for r in kept}
        table[active.kid] = (active.public_key, math.inf)
        return cls(active, kept, table)


class KeyRing:
    """One active signing key and the previous keys still accepted for verification."""

    def __init__(
        self,
        active: SigningKey,
        previous: Iterable[RetiredKey] = (),
        *,
        overlap: float = DEFAULT_OVERLAP,
    ) -> None:
        if overlap < 0:
            raise KeyRingError("overlap must not be negative")
        self._overlap = float(overlap)
        self._lock = threading.Lock()
        self._state = _State.of(active, (r for r in previous if r.key.kid != active.kid))

    @classmethod
    def generate(cls, now: float, *, overlap: float = DEFAULT_OVERLAP) -> KeyRing:
        """A ring with one new active key."""
        return cls(SigningKey.generate(now), overlap=overlap)

    def __repr__(self) -> str:
        kids = [r.key.kid for r in self._state.previous]
        return f"KeyRing(active={self.active.kid!r}, previous={kids!r})"

    @property
    def overlap(self) -> float:
        """Seconds a retired key still verifies."""
        return self._overlap

    @property
    def active(self) -> SigningKey:
        """The key that signs new tokens."""
        return self._state.active

    @property
    def previous(self) -> tuple[RetiredKey, ...]:
        """Retired keys not yet dropped (some may be past ``accepted_until``)."""
        return self._state.previous

    def rotate(self, now: float) -> SigningKey:
        """Make a new active key; the current one verifies for ``overlap`` more seconds."""
        new = SigningKey.generate(now)
        with self._lock:
            old = self._state
            retired = RetiredKey(old.active, now, now + self._overlap)
            kept = [r for r in old.previous if r.accepted_until > now]
            self._state = _State.of(new, [retired, *kept])
        return new

    def remove(self, kid: str) -> None:
        """Stop accepting a previous key now (a leaked key). The active key cannot be
        removed: rotate first."""
        with self._lock:
            state = self._state
            if kid == state.active.kid:
                raise KeyRingError("cannot remove the active key; rotate first")
            self._state = _State.of(state.active, [r for r in state.previous if r.key.kid != kid])

    def verification_key(self, kid: str, now: float) -> Ed25519PublicKey | None:
        """The public key for ``kid`` if the ring accepts it at ``now``, else ``None``."""
        entry = self._state.verify_until.get(kid)
        if entry is None or now >= entry[1]:
            return None
        return entry[0]

    def jwks(self, now: float) -> dict[str, list[dict[str, str]]]:
        """The public JWKS (``/.well-known/jwks.json``): keys accepted at ``now``."""
        state = self._state
        keys = [state.active.public_jwk()]
        keys += [r.key.public_jwk() for r in state.previous if r.accepted_until > now]
        return {"keys": keys}

    def export_encrypted(self, master_key: MasterKey, *, name: str = "access-tokens") -> str:
        """The whole ring, private keys included, as envelope-encrypted text."""
        state = self._state
        document = {
            "version": _EXPORT_VERSION,
            "overlap": self._overlap,
            "active": _export_key(state.active),
            "previous": [
                {**_export_key(r.key), "retired_at": r.retired_at, "until": r.accepted_until}
                for r in state.previous
            ],
        }
        cipher = EnvelopeCipher(master_key)
        return cipher.encrypt_text(jose.json_bytes(document), purpose=EXPORT_PURPOSE, name=name)

    @classmethod
    def import_encrypted(
        cls, data: str, master_key: MasterKey, *, name: str = "access-tokens"
    ) -> KeyRing:
        """A ring from ``export_encrypted`` output. ``DecryptionError`` if the text was
        altered or is another ring's; ``KeyRingError`` if its content is inconsistent."""
        plain = EnvelopeCipher(master_key).decrypt_text(data, purpose=EXPORT_PURPOSE, name=name)
        try:
            doc = jose.json_object(plain)
            if doc.get("version") != _EXPORT_VERSION:
                raise KeyRingError("unknown key ring export version")
            previous = [
                RetiredKey(_import_key(p), float(p["retired_at"]), float(p["until"]))
                for p in doc["previous"]
            ]
            return cls(_import_key(doc["active"]), previous, overlap=float(doc["overlap"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, KeyRingError):
                raise
            raise KeyRingError(f"malformed key ring export: {type(exc).__name__}") from None


def _export_key(key: SigningKey) -> dict[str, Any]:
    raw = key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return {"kid": key.kid, "created_at": key.created_at, "d": jose.b64url_encode(raw)}


def _import_key(doc: Mapping[str, Any]) -> SigningKey:
    private = Ed25519PrivateKey.from_private_bytes(jose.b64url_decode(doc["d"]))
    return SigningKey(doc["kid"], float(doc["created_at"]), private)
