"""Ed25519 verification by libsodium (``jose.verify_signature``) against OpenSSL's: it
accepts what is valid, refuses what OpenSSL refuses, and refuses more (small-order keys)."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.identity import jose

KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key()
MESSAGE = b"eyJ0eXAiOiJkcG9wK2p3dCJ9.eyJqdGkiOiJ4In0"
SIGNATURE = KEY.sign(MESSAGE)
# The identity point (small order 1) and a signature (R = identity, S = 0) that satisfies
# the verification equation for every message under that key.
IDENTITY = bytes([1]) + bytes(31)
UNIVERSAL = IDENTITY + bytes(32)


def openssl_accepts(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def test_a_valid_signature_is_accepted() -> None:
    assert jose.verify_signature(jose.ED25519, PUBLIC, SIGNATURE, MESSAGE)


def test_another_message_or_key_is_refused() -> None:
    assert not jose.verify_signature(jose.ED25519, PUBLIC, SIGNATURE, MESSAGE + b"x")
    other = Ed25519PrivateKey.generate().public_key()
    assert not jose.verify_signature(jose.ED25519, other, SIGNATURE, MESSAGE)


def test_signatures_of_the_wrong_size_are_refused() -> None:
    for signature in (b"", SIGNATURE[:63], SIGNATURE + b"\x00"):
        assert not jose.verify_signature(jose.ED25519, PUBLIC, signature, MESSAGE)


def test_the_small_order_key_forgery_is_refused() -> None:
    """OpenSSL accepts (R = identity, S = 0) under the identity key for any message;
    libsodium refuses small-order keys."""
    weak = Ed25519PublicKey.from_public_bytes(IDENTITY)
    assert openssl_accepts(weak, UNIVERSAL, MESSAGE)  # what the stricter check prevents
    assert not jose.verify_signature(jose.ED25519, weak, UNIVERSAL, MESSAGE)


@settings(max_examples=300, deadline=None)
@given(
    part=st.sampled_from(["signature", "message", "key"]),
    position=st.integers(min_value=0, max_value=200),
    flip=st.integers(min_value=1, max_value=255),
)
def test_never_accepts_what_openssl_refuses(part: str, position: int, flip: int) -> None:
    """One byte of the signature, message or key changed: accepted only if OpenSSL accepts
    (and, the signature being unforgeable, neither does)."""
    signature, message = bytearray(SIGNATURE), bytearray(MESSAGE)
    raw = bytearray(PUBLIC.public_bytes(Encoding.Raw, PublicFormat.Raw))
    target = {"signature": signature, "message": message, "key": raw}[part]
    target[position % len(target)] ^= flip
    try:
        public = Ed25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError:
        return  # not a point: no key object to verify with
    ours = jose.verify_signature(jose.ED25519, public, bytes(signature), bytes(message))
    assert not ours or openssl_accepts(public, bytes(signature), bytes(message))
    assert not ours


@settings(max_examples=50, deadline=None)
@given(message=st.binary(max_size=2000))
def test_accepts_every_valid_signature(message: bytes) -> None:
    key = Ed25519PrivateKey.generate()
    signature = key.sign(message)
    assert jose.verify_signature(jose.ED25519, key.public_key(), signature, message)
    assert openssl_accepts(key.public_key(), signature, message)
