"""Signing keys, JWK thumbprints, the key ring's rotation and its encrypted export."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tether.crypto.envelope import DecryptionError, EnvelopeCipher
from tether.crypto.masterkey import MasterKey
from tether.identity import jose
from tether.identity.errors import KeyRingError
from tether.identity.keys import EXPORT_PURPOSE, KeyRing, SigningKey, jwk_thumbprint

T0 = 1_700_000_000.0
MASTER = MasterKey(bytes(range(32)), source="test")

# RFC 7638 section 3.1.
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_B"
        "JECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_F"
        "DW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4"
        "vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
# RFC 8037 appendix A.1-A.3.
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_thumbprint_rfc7638_vector() -> None:
    assert jwk_thumbprint(RFC7638_JWK) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_thumbprint_rfc8037_vector_and_public_jwk() -> None:
    key = Ed25519PrivateKey.from_private_bytes(jose.b64url_decode(RFC8037_D))
    jwk = jose.public_jwk(key)
    assert jwk == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    assert jwk_thumbprint(jwk) == RFC8037_THUMBPRINT


def test_rfc8037_signature_vector() -> None:
    key = Ed25519PrivateKey.from_private_bytes(jose.b64url_decode(RFC8037_D))
    signature = jose.sign("EdDSA", key, b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc")
    assert jose.b64url_encode(signature) == (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
    )


def test_thumbprint_ignores_optional_members_and_order() -> None:
    base = {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X}
    decorated = {"use": "sig", "x": RFC8037_X, "kid": "k", "crv": "Ed25519", "kty": "OKP"}
    assert jwk_thumbprint(decorated) == jwk_thumbprint(base)


def test_thumbprint_of_an_ec_key_uses_x_and_y() -> None:
    jwk = jose.public_jwk(ec.generate_private_key(ec.SECP256R1()))
    other = dict(jwk, y=jwk["x"])
    assert jwk_thumbprint(jwk) != jwk_thumbprint(other)


@pytest.mark.parametrize(
    "jwk",
    [
        {},
        {"kty": "OKP", "crv": "Ed25519"},
        {"kty": "EC", "crv": "P-256", "x": "AA"},
        {"kty": "XYZ", "x": "AA"},
        {"kty": ["OKP"], "x": "AA"},
        {"kty": "OKP", "crv": "Ed25519", "x": 5},
    ],
)
def test_thumbprint_of_an_incomplete_jwk_is_a_value_error(jwk: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        jwk_thumbprint(jwk)


def test_signing_key_kid_is_its_thumbprint() -> None:
    key = SigningKey.generate(T0)
    assert key.kid == jwk_thumbprint(key.public_jwk())
    assert key.created_at == T0


def test_signing_key_with_another_kid_is_refused() -> None:
    with pytest.raises(KeyRingError, match="thumbprint"):
        SigningKey("some-other-kid", T0, Ed25519PrivateKey.generate())


def test_signing_key_repr_shows_no_private_material() -> None:
    key = SigningKey.generate(T0)
    raw = jose.b64url_encode(key.private_key.private_bytes_raw())
    assert raw not in repr(key)
    assert key.kid in repr(key)


def test_jwks_publishes_public_keys_only() -> None:
    ring = KeyRing.generate(T0)
    jwks = ring.jwks(T0)
    assert len(jwks["keys"]) == 1
    (jwk,) = jwks["keys"]
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert jwk["kid"] == ring.active.kid
    assert jwk["alg"] == "EdDSA"
    private = jose.b64url_encode(ring.active.private_key.private_bytes_raw())
    assert private not in json.dumps(jwks)


def test_rotation_keeps_the_old_key_for_the_overlap_only() -> None:
    ring = KeyRing.generate(T0, overlap=600)
    old = ring.active
    new = ring.rotate(T0 + 100)
    assert ring.active is new
    assert new.kid != old.kid
    assert ring.verification_key(old.kid, T0 + 100) is not None
    assert ring.verification_key(old.kid, T0 + 699) is not None
    assert ring.verification_key(old.kid, T0 + 700) is None
    assert ring.verification_key(new.kid, T0 + 10**9) is not None
    assert [k["kid"] for k in ring.jwks(T0 + 699)["keys"]] == [new.kid, old.kid]
    assert [k["kid"] for k in ring.jwks(T0 + 700)["keys"]] == [new.kid]


def test_rotation_drops_keys_past_their_overlap() -> None:
    ring = KeyRing.generate(T0, overlap=60)
    first = ring.active
    second = ring.rotate(T0 + 10)
    ring.rotate(T0 + 1000)
    kids = [r.key.kid for r in ring.previous]
    assert kids == [second.kid]
    assert first.kid not in kids


def test_unknown_kid_has_no_verification_key() -> None:
    ring = KeyRing.generate(T0)
    assert ring.verification_key("nope", T0) is None


def test_remove_stops_a_leaked_previous_key_at_once() -> None:
    ring = KeyRing.generate(T0, overlap=600)
    old = ring.active
    ring.rotate(T0 + 1)
    ring.remove(old.kid)
    assert ring.verification_key(old.kid, T0 + 2) is None
    assert [k["kid"] for k in ring.jwks(T0 + 2)["keys"]] == [ring.active.kid]


def test_the_active_key_cannot_be_removed() -> None:
    ring = KeyRing.generate(T0)
    with pytest.raises(KeyRingError, match="rotate first"):
        ring.remove(ring.active.kid)
    assert ring.verification_key(ring.active.kid, T0) is not None


def test_negative_overlap_is_refused() -> None:
    with pytest.raises(KeyRingError):
        KeyRing.generate(T0, overlap=-1)


def test_export_import_round_trip() -> None:
    ring = KeyRing.generate(T0, overlap=900)
    old = ring.active
    ring.rotate(T0 + 5)
    text = ring.export_encrypted(MASTER)
    assert old.kid not in text  # encrypted, kids included
    restored = KeyRing.import_encrypted(text, MASTER)
    assert restored.active.kid == ring.active.kid
    assert restored.overlap == 900
    assert [(r.key.kid, r.accepted_until) for r in restored.previous] == [(old.kid, T0 + 905)]
    signature = restored.active.sign(b"data")
    ring.active.public_key.verify(signature, b"data")


def test_import_under_another_master_key_fails() -> None:
    text = KeyRing.generate(T0).export_encrypted(MASTER)
    with pytest.raises(DecryptionError, match="another master key"):
        KeyRing.import_encrypted(text, MasterKey(bytes(32), source="other"))


def test_import_of_another_rings_export_fails() -> None:
    text = KeyRing.generate(T0).export_encrypted(MASTER, name="ssh-ca")
    with pytest.raises(DecryptionError):
        KeyRing.import_encrypted(text, MASTER, name="access-tokens")


def test_import_of_tampered_export_fails() -> None:
    text = KeyRing.generate(T0).export_encrypted(MASTER)
    flipped = text[:-5] + ("A" if text[-5] != "A" else "B") + text[-4:]
    with pytest.raises(DecryptionError):
        KeyRing.import_encrypted(flipped, MASTER)


def _encrypt_document(document: object) -> str:
    data = json.dumps(document).encode()
    return EnvelopeCipher(MASTER).encrypt_text(data, purpose=EXPORT_PURPOSE, name="access-tokens")


def test_import_refuses_a_kid_that_is_not_the_keys_thumbprint() -> None:
    key = SigningKey.generate(T0)
    d = jose.b64url_encode(key.private_key.private_bytes_raw())
    doc = {
        "version": 1,
        "overlap": 60,
        "active": {"kid": "forged", "created_at": T0, "d": d},
        "previous": [],
    }
    with pytest.raises(KeyRingError, match="thumbprint"):
        KeyRing.import_encrypted(_encrypt_document(doc), MASTER)


@pytest.mark.parametrize(
    "doc",
    [
        {"version": 2},
        {"version": 1},
        {"version": 1, "overlap": 60, "active": {"kid": "x"}, "previous": []},
        {"version": 1, "overlap": "x", "active": None, "previous": []},
        [1, 2],
    ],
)
def test_import_of_a_malformed_document_is_a_key_ring_error(doc: object) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.import_encrypted(_encrypt_document(doc), MASTER)
