"""The DPoP verifier's caches (proof headers by exact text, ``ath`` by token): a verifier
that has seen an agent's proofs decides every proof exactly as a fresh one would."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.identity import jose
from tether.identity.dpop import DPoPVerifier, make_proof
from tether.identity.errors import (
    BindingMismatch,
    CredentialError,
    DPoPInvalid,
    ReplayDetected,
)
from tether.identity.keys import jwk_thumbprint
from tether.identity.replay import MemoryReplayCache

T0 = 1_700_000_000.0
URL = "https://api.example.com/v1/orders/17"
KEY = Ed25519PrivateKey.generate()
JKT = jwk_thumbprint(jose.public_jwk(KEY))
TOKEN = "header.payload.signature-of-the-token"


def verifier() -> DPoPVerifier:
    return DPoPVerifier(clock=lambda: T0, replay_cache=MemoryReplayCache(lambda: T0))


def warm() -> DPoPVerifier:
    """A verifier that has accepted one proof of KEY for TOKEN (its header is cached)."""
    made = verifier()
    made.verify(proof(jti="warm-up"), htm="GET", htu=URL, access_token=TOKEN, expected_jkt=JKT)
    return made


def proof(key: Any = KEY, token: str = TOKEN, **kwargs: Any) -> str:
    return make_proof(key, "GET", URL, now=T0, access_token=token, **kwargs)


def outcome(check: DPoPVerifier, text: str, token: str = TOKEN) -> str:
    try:
        check.verify(text, htm="GET", htu=URL, access_token=token, expected_jkt=JKT)
    except CredentialError as error:
        return f"{type(error).__name__}: {error.reason}"
    return "accepted"


def swap_signature(text: str, other: str) -> str:
    return text.rpartition(".")[0] + "." + other.rpartition(".")[2]


def test_a_cached_header_still_needs_a_valid_signature() -> None:
    check = warm()
    forged = swap_signature(proof(jti="a"), proof(jti="b"))  # the header is the cached one
    with pytest.raises(DPoPInvalid, match="signature"):
        check.verify(forged, htm="GET", htu=URL, access_token=TOKEN, expected_jkt=JKT)


def test_a_cached_header_does_not_skip_the_replay_check() -> None:
    check = warm()
    text = proof(jti="once")
    check.verify(text, htm="GET", htu=URL, access_token=TOKEN, expected_jkt=JKT)
    with pytest.raises(ReplayDetected):
        check.verify(text, htm="GET", htu=URL, access_token=TOKEN, expected_jkt=JKT)


def test_a_cached_ath_is_per_token() -> None:
    check = warm()
    for_other = proof(token="another.token.entirely", jti="x")
    with pytest.raises(DPoPInvalid, match="ath"):
        check.verify(for_other, htm="GET", htu=URL, access_token=TOKEN, expected_jkt=JKT)


def test_a_cached_header_is_bound_to_its_key() -> None:
    check = warm()
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(BindingMismatch):
        check.verify(proof(other, jti="y"), htm="GET", htu=URL, access_token=TOKEN,
                     expected_jkt=JKT)  # fmt: skip


def test_a_header_whose_signature_failed_is_not_remembered() -> None:
    check = verifier()
    forged = swap_signature(proof(jti="a"), proof(jti="b"))
    assert outcome(check, forged).startswith("DPoPInvalid")
    assert check._headers == {}
    assert outcome(check, proof(jti="c")) == "accepted"
    assert len(check._headers) == 1


def test_the_header_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from tether.identity import dpop

    monkeypatch.setattr(dpop, "_MAX_KNOWN_HEADERS", 3)
    check = verifier()
    keys = [Ed25519PrivateKey.generate() for _ in range(5)]
    for number, key in enumerate(keys):
        check.verify(make_proof(key, "GET", URL, now=T0, jti=f"k{number}"), htm="GET", htu=URL)
        assert len(check._headers) <= 3
    assert outcome(check, proof(jti="after")) == "accepted"


_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    position=st.integers(min_value=0, max_value=10_000),
    char=st.sampled_from(_CHARS),
    jti=st.text(min_size=1, max_size=20),
)
def test_warm_and_cold_verifiers_decide_alike(position: int, char: str, jti: str) -> None:
    """One character of a valid proof changed anywhere (header, payload or signature): the
    verifier that cached this agent's header decides as a fresh one."""
    text = proof(jti=jti)
    at = position % len(text)
    mutated = text[:at] + char + text[at + 1 :]
    decided = outcome(warm(), mutated)
    assert decided == outcome(verifier(), mutated)
    assert decided == "accepted" if mutated == text else decided != "accepted"


def test_a_proof_under_a_small_order_key_is_refused() -> None:
    """The (identity key, R = identity, S = 0) proof verifies for any payload under
    OpenSSL's Ed25519; Tether's verification (libsodium) refuses it."""
    identity = bytes([1]) + bytes(31)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": jose.b64url_encode(identity)}
    header = {"typ": "dpop+jwt", "alg": "EdDSA", "jwk": jwk}
    claims = {"jti": "forged", "htm": "GET", "htu": URL, "iat": int(T0)}
    forged = jose.encode_compact(header, claims, lambda _data: identity + bytes(32))
    with pytest.raises(DPoPInvalid, match="signature"):
        verifier().verify(forged, htm="GET", htu=URL)
