"""Strict JOSE building blocks: base64url, JSON, compact JWS, public JWKs, signatures.

Tether verifies two kinds of JWS: its own access tokens and DPoP proofs made by agents.
Both go through this module, which implements the small part of RFC 7515/7517/7518/8037
they need, and refuses everything else. Why not PyJWT: see ``tether.identity.tokens``.

Security decisions:

* **The algorithm is chosen by the verifier, never by the token.** ``verify_signature``
  takes the algorithm the caller already checked against its allow-list and a key whose
  type was checked against that algorithm (``public_key_from_jwk``). There is no code
  path from a header's ``alg`` to HMAC, RSA or ``none``: those algorithms are simply not
  implemented, so algorithm confusion has nothing to confuse.
* **Ed25519 signatures are verified by libsodium** (PyNaCl's ``crypto_sign_open``), not
  OpenSSL: 40 % less CPU per verification on the bench machine (83 vs 149 µs), stricter,
  never looser: besides the checks OpenSSL makes (``S`` canonical, ``R`` compared as
  bytes, no cofactor), it refuses small-order and non-canonical public keys and
  small-order ``R``, so a signature it accepts OpenSSL accepts too (a property test
  compares the two). Signing and ES256 stay with ``cryptography``.
* **One spelling per token.** base64url must be unpadded, use only the URL-safe alphabet
  and be canonical (no stray low bits in the last character); a token therefore has one
  byte string per meaning, and a cache keyed on the token cannot be fooled by variants.
* **Duplicate JSON member names are refused** (RFC 7515 section 5.2 allows refusing
  them; taking the last one, as Python's ``json`` does, invites parser differentials
  between Tether and any other reader). ``NaN``/``Infinity``, invalid UTF-8 and nesting
  deep enough to exhaust the recursion limit are refused too, all as ``ValueError``.
* **Public keys only.** A JWK carrying a private member (``d``, the RSA CRT members,
  symmetric ``k``) is refused: a client that sends its private key has leaked it, and
  accepting it would teach clients to keep doing so. The key type must match the
  algorithm exactly (``EdDSA`` = OKP/Ed25519, ``ES256`` = EC/P-256, with 32-byte
  coordinates, on the curve).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey

ED25519: Final = "EdDSA"
ES256: Final = "ES256"
SUPPORTED_ALGS: Final = frozenset({ED25519, ES256})
PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_B64_VALUE: Final = {
    c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
}
_UNUSED_BITS: Final = {2: 0x0F, 3: 0x03}
_SIGNATURE_SIZE: Final = 64  # Ed25519, and ES256 as r || s (RFC 7518 section 3.4)
_P256_COORD: Final = 32


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded, canonical base64url; ``ValueError`` otherwise."""
    remainder = len(text) % 4
    if remainder == 1 or not _B64URL.fullmatch(text):
        raise ValueError("not unpadded base64url")
    # The last character of a 2- or 3-character group carries 4 or 2 unused low bits,
    # which must be zero: otherwise several spellings would decode to the same bytes.
    if remainder and _B64_VALUE[text[-1]] & _UNUSED_BITS[remainder]:
        raise ValueError("non-canonical base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-remainder % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc


def json_bytes(value: Mapping[str, Any]) -> bytes:
    """Compact JSON, ASCII only (what Tether signs)."""
    return json.dumps(value, separators=(",", ":")).encode("ascii")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate JSON member name")
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"JSON constant {name} not allowed")


_DECODER: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constants)


def json_object(data: bytes) -> dict[str, Any]:
    """A strict JSON object from UTF-8 bytes; ``ValueError`` for anything else."""
    try:
        value = _DECODER.decode(data.decode("utf-8"))
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


@dataclass(frozen=True)
class CompactJWS:
    """A compact JWS split and decoded, signature not yet verified."""

    header: dict[str, Any]
    payload_b64: str
    signing_input: bytes
    signature: bytes

    def payload(self) -> dict[str, Any]:
        """The payload as a strict JSON object; call only after verifying the signature."""
        return json_object(b64url_decode(self.payload_b64))


@dataclass(frozen=True, slots=True)
class RawJWS:
    """A compact JWS split, its header still encoded (for callers that cache what they
    learnt from a header by its exact text), signature not yet verified."""

    header_b64: str
    payload_b64: str
    signing_input: bytes
    signature: bytes

    def payload(self) -> dict[str, Any]:
        """The payload as a strict JSON object; call only after verifying the signature."""
        return json_object(b64url_decode(self.payload_b64))


def split_raw(token: str, *, max_size: int) -> RawJWS:
    """Split ``header.payload.signature``; decodes the signature only (the header's and
    payload's characters are checked). ``ValueError`` if bad."""
    if len(token) > max_size:
        raise ValueError("too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    header_b64, payload_b64, signature_b64 = parts
    signature = b64url_decode(signature_b64)
    if (
        not _B64URL.fullmatch(header_b64)
        or not _B64URL.fullmatch(payload_b64)
        or len(signature) != _SIGNATURE_SIZE
    ):
        raise ValueError("malformed JWS")
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    return RawJWS(header_b64, payload_b64, signing_input, signature)


def split_compact(token: str, *, max_size: int) -> CompactJWS:
    """Split ``header.payload.signature``; decodes the header only. ``ValueError`` if bad."""
    raw = split_raw(token, max_size=max_size)
    header = json_object(b64url_decode(raw.header_b64))
    return CompactJWS(header, raw.payload_b64, raw.signing_input, raw.signature)


def encode_compact(
    header: Mapping[str, Any], payload: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """``header.payload.signature`` with ``sign`` over the signing input."""
    signing_input = b64url_encode(json_bytes(header)) + "." + b64url_encode(json_bytes(payload))
    signature = sign(signing_input.encode("ascii"))
    return signing_input + "." + b64url_encode(signature)


def sign(alg: str, key: PrivateKey, data: bytes) -> bytes:
    """A JWS signature (ES256 as raw ``r || s``)."""
    if alg == ED25519 and isinstance(key, Ed25519PrivateKey):
        return key.sign(data)
    if alg == ES256 and isinstance(key, ec.EllipticCurvePrivateKey):
        _require_p256(key.curve)
        r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(_P256_COORD, "big") + s.to_bytes(_P256_COORD, "big")
    raise ValueError(f"cannot sign {alg} with {type(key).__name__}")


def verify_signature(alg: str, key: PublicKey, signature: bytes, data: bytes) -> bool:
    """Whether ``signature`` is a valid ``alg`` signature of ``data`` by ``key``."""
    if alg == ED25519 and isinstance(key, Ed25519PublicKey):
        return _ed25519_verify(key, signature, data)
    try:
        if alg == ES256 and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != _SIGNATURE_SIZE:
                return False
            r = int.from_bytes(signature[:_P256_COORD], "big")
            s = int.from_bytes(signature[_P256_COORD:], "big")
            key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False


def _ed25519_verify(key: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    # libsodium (crypto_sign_open wants the signature and the message together).
    if len(signature) != _SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(signature + data, key.public_bytes(Encoding.Raw, PublicFormat.Raw))
    except BadSignatureError:
        return False
    return True


def public_jwk(key: PublicKey | PrivateKey) -> dict[str, str]:
    """The public JWK of a key (RFC 8037 OKP for Ed25519, RFC 7518 EC for P-256)."""
    public = (
        key.public_key() if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) else key
    )
    if isinstance(public, Ed25519PublicKey):
        raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    _require_p256(public.curve)
    point = public.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    x, y = point[1 : 1 + _P256_COORD], point[1 + _P256_COORD :]
    return {"kty": "EC", "crv": "P-256", "x": b64url_encode(x), "y": b64url_encode(y)}


def alg_for_key(key: PrivateKey) -> str:
    """The JWS algorithm Tether uses with ``key``."""
    if isinstance(key, Ed25519PrivateKey):
        return ED25519
    _require_p256(key.curve)
    return ES256


def public_key_from_jwk(jwk: object, alg: str) -> PublicKey:
    """The public key of a JWK for ``alg``; ``ValueError`` if private, mismatched or bad."""
    if not isinstance(jwk, dict):
        raise ValueError("jwk is not an object")
    if PRIVATE_JWK_MEMBERS.intersection(jwk):
        raise ValueError("jwk contains private key material")
    if jwk.get("alg", alg) != alg:
        raise ValueError("jwk alg does not match")
    if alg == ED25519 and jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
        x = _member(jwk, "x")
        if len(x) != 32:
            raise ValueError("bad Ed25519 key")
        return Ed25519PublicKey.from_public_bytes(x)
    if alg == ES256 and jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        x, y = _member(jwk, "x"), _member(jwk, "y")
        if len(x) != _P256_COORD or len(y) != _P256_COORD:
            raise ValueError("bad P-256 key")
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + x + y)
    raise ValueError("jwk key type does not match alg")


def _member(jwk: dict[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise ValueError(f"jwk member {name} missing")
    return b64url_decode(value)


def _require_p256(curve: ec.EllipticCurve) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise ValueError("only P-256 EC keys are supported")
