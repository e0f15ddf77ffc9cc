"""Access tokens: issuance, strict verification (one test per attack), the cache, mTLS."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from tether.identity import jose
from tether.identity.certbind import check_binding, x5t_s256
from tether.identity.claims import MAX_DERIVED_FROM
from tether.identity.errors import (
    BindingMismatch,
    CredentialError,
    IssuanceError,
    TokenExpired,
    TokenInvalid,
    TokenRevoked,
)
from tether.identity.keys import KeyRing, SigningKey
from tether.identity.revocation import RevocationSet
from tether.identity.tokens import (
    MAX_TOKEN_SIZE,
    Actor,
    Claims,
    Confirmation,
    Runtime,
    Task,
    TokenIssuer,
    TokenVerifier,
)

T0 = 1_700_000_000.0
ISS = "https://tether.example"
AUD = "tether"
JKT = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate(T0 - 1000, overlap=3600)


@pytest.fixture
def issuer(ring: KeyRing, clock: Clock) -> TokenIssuer:
    return TokenIssuer(ring, issuer=ISS, audience=AUD, clock=clock, max_lifetime=1800)


@pytest.fixture
def verifier(ring: KeyRing, clock: Clock) -> TokenVerifier:
    return TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock, leeway=5)


def issue(issuer: TokenIssuer, **overrides: Any) -> tuple[str, Claims]:
    args: dict[str, Any] = {
        "subject": "billing-bot-4",
        "task": Task("task-17", "incident-response"),
        "scope": ["billing-svc-*", "billing-db"],
        "runtime": Runtime("k8s:prod/billing-bot-4-7f9c", {"env": "prod", "team": "billing"}),
        "cnf": Confirmation(jkt=JKT),
    }
    args.update(overrides)
    return issuer.issue(**args)


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    return jose.encode_compact(header, payload, sign)


def header_of(ring: KeyRing, **changes: Any) -> dict[str, Any]:
    return {"alg": "EdDSA", "typ": "at+jwt", "kid": ring.active.kid, **changes}


def payload_of(**changes: Any) -> dict[str, Any]:
    now = int(T0)
    doc: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "sub": "billing-bot-4",
        "jti": "jti-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "task": {"id": "task-17", "purpose": "p"},
        "scope": ["billing-*"],
        "runtime": {"id": "r1", "labels": {}},
        "cnf": {"jkt": JKT},
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


def signed(ring: KeyRing, **changes: Any) -> str:
    """A token with ``changes`` to the payload, validly signed by the ring's active key."""
    return forge(header_of(ring), payload_of(**changes), ring.active.sign)


def reason(excinfo: pytest.ExceptionInfo[CredentialError]) -> str:
    return excinfo.value.reason


# --- the happy path -------------------------------------------------------------------


def test_issued_token_verifies_to_the_same_claims(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token, claims = issue(issuer)
    assert verifier.verify(token) == claims
    assert claims.exp - claims.iat == 600
    assert claims.iat == claims.nbf == int(T0)
    assert claims.scope == ("billing-svc-*", "billing-db")
    assert claims.runtime.labels == {"env": "prod", "team": "billing"}
    assert claims.agent_id == "billing-bot-4"


def test_header_is_eddsa_at_jwt_with_kid(issuer: TokenIssuer, ring: KeyRing) -> None:
    token, _ = issue(issuer)
    header = jose.json_object(jose.b64url_decode(token.split(".")[0]))
    assert header == {"alg": "EdDSA", "typ": "at+jwt", "kid": ring.active.kid}


def test_delegated_token_carries_the_actor_chain(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    chain = Actor("billing-bot-4", Actor("orchestrator-1"))
    token, _ = issue(issuer, subject="user:alice", agent="billing-bot-4", act=chain)
    claims = verifier.verify(token)
    assert claims.sub == "user:alice"
    assert claims.agent_id == "billing-bot-4"
    assert claims.act == chain


def test_a_token_names_the_token_it_was_issued_from(
    issuer: TokenIssuer, verifier: TokenVerifier, ring: KeyRing
) -> None:
    """``parent_jti`` (certificate-bound tokens) round-trips; a non-string one is refused."""
    token, issued = issue(issuer, parent_jti="jti-of-the-parent")
    assert verifier.verify(token).parent_jti == issued.parent_jti == "jti-of-the-parent"
    assert verifier.verify(issue(issuer)[0]).parent_jti is None
    with pytest.raises(TokenInvalid):
        verifier.verify(signed(ring, parent_jti=7))


def test_an_unverified_revocation_list_refuses_everything(issuer: TokenIssuer) -> None:
    """Before its first load, or when its entries do not match their ledger, a node cannot
    tell which revocation is missing: no credential, no issuance, every id counts as revoked."""
    _, claims = issue(issuer)
    for unverified in ("the revocation list is not loaded", "the revocation list does not verify"):
        revoked = RevocationSet(unverified=unverified)
        assert revoked.reason(claims) == unverified
        assert revoked.issuance_reason("a", "t", "r") == unverified
        assert ("token", "anything") in revoked
        assert revoked.refusal("token", "anything", "the certificate is revoked") == unverified
    assert RevocationSet().unverified == "the revocation list is not loaded"  # the default
    loaded = RevocationSet(unverified=None)
    loaded.add("token", "c1")
    assert loaded.refusal("token", "c1", "the certificate is revoked") == (
        "the certificate is revoked"
    )
    assert loaded.refusal("token", "c2", "the certificate is revoked") is None


def test_revoking_the_parent_revokes_the_token(issuer: TokenIssuer) -> None:
    _, claims = issue(issuer, parent_jti="parent")
    revoked = RevocationSet(unverified=None)  # as loaded and verified
    assert revoked.reason(claims) is None
    revoked.add("token", "parent")
    assert revoked.reason(claims) == "the token it was issued from is revoked"


def test_a_token_names_every_token_it_was_derived_from(
    issuer: TokenIssuer, verifier: TokenVerifier, ring: KeyRing
) -> None:
    """``derived_from`` round-trips and is bounded; anything but a short list of non-empty
    strings is refused; revoking any entry revokes the token."""
    token, issued = issue(issuer, derived_from=("a", "b"))
    assert verifier.verify(token).derived_from == issued.derived_from == ("a", "b")
    assert issued.lineage == (issued.jti, "a", "b")
    assert verifier.verify(issue(issuer)[0]).derived_from == ()
    for bad in ("a", ["a", 7], [""], ["j"] * (MAX_DERIVED_FROM + 1), {"a": 1}):
        with pytest.raises(TokenInvalid, match="derived_from"):
            verifier.verify(signed(ring, derived_from=bad))
    with pytest.raises(IssuanceError):
        issue(issuer, derived_from=["j"] * (MAX_DERIVED_FROM + 1))
    revoked = RevocationSet(unverified=None)  # as loaded and verified
    assert revoked.reason(issued) is None
    revoked.add("token", "b")
    assert revoked.reason(issued) == "the token it was derived from is revoked"


def test_a_token_carries_its_renewal_family(
    issuer: TokenIssuer, verifier: TokenVerifier, ring: KeyRing
) -> None:
    """``family`` round-trips, a new token starts its own (its jti) unless it joins one; a
    token without the claim (issued before families) has none; anything but a non-empty
    string is refused; revoking the family's first token revokes every member, at one set
    lookup; a token derived from a member names the family in its lineage."""
    token, first = issue(issuer)
    assert first.family == first.jti
    assert verifier.verify(token).family == first.jti
    token, renewal = issue(issuer, family=first.jti)
    assert verifier.verify(token) == renewal
    assert (renewal.family, renewal.derived_from) == (first.jti, ())
    assert renewal.lineage == (renewal.jti, first.jti)
    assert verifier.verify(signed(ring)).family is None
    for bad in (7, "", ["a"], {"jti": "a"}, True, 1.5):
        with pytest.raises(TokenInvalid, match="family"):
            verifier.verify(signed(ring, family=bad))
    with pytest.raises(IssuanceError):
        issue(issuer, family="")
    revoked = RevocationSet(unverified=None)  # as loaded and verified
    assert revoked.reason(renewal) is None
    revoked.add("token", first.jti)
    assert revoked.reason(first) == "the token is revoked"
    assert revoked.reason(renewal) == "a token of its renewal family is revoked"


def test_jti_is_unique_per_token(issuer: TokenIssuer) -> None:
    jtis = {issue(issuer)[1].jti for _ in range(50)}
    assert len(jtis) == 50


def test_claims_are_read_only(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issue(issuer)
    claims = verifier.verify(token)
    with pytest.raises(TypeError):
        claims.runtime.labels["env"] = "dev"  # type: ignore[index]


# --- lifetime cap ---------------------------------------------------------------------


def test_lifetime_above_the_cap_is_refused(issuer: TokenIssuer) -> None:
    with pytest.raises(IssuanceError, match=r"1\.\.1800"):
        issue(issuer, lifetime=1801)
    assert issue(issuer, lifetime=1800)[1].exp == int(T0) + 1800


@pytest.mark.parametrize("lifetime", [0, -5, 1.5, True])
def test_lifetime_must_be_a_positive_integer(issuer: TokenIssuer, lifetime: object) -> None:
    with pytest.raises(IssuanceError):
        issue(issuer, lifetime=lifetime)


def test_issuer_refuses_a_cap_longer_than_the_key_overlap(clock: Clock) -> None:
    ring = KeyRing.generate(T0, overlap=600)
    with pytest.raises(IssuanceError, match="outlive"):
        TokenIssuer(ring, issuer=ISS, audience=AUD, clock=clock, max_lifetime=601)


def test_issuer_refuses_default_above_cap(ring: KeyRing, clock: Clock) -> None:
    with pytest.raises(IssuanceError):
        TokenIssuer(
            ring, issuer=ISS, audience=AUD, clock=clock, default_lifetime=900, max_lifetime=600
        )


@pytest.mark.parametrize(
    "overrides",
    [
        {"subject": ""},
        {"scope": "billing-*"},
        {"scope": ["ok", ""]},
        {"task": Task("", "p")},
        {"agent": ""},
    ],
)
def test_issuer_refuses_malformed_values(issuer: TokenIssuer, overrides: dict[str, Any]) -> None:
    with pytest.raises(IssuanceError):
        issue(issuer, **overrides)


def test_issuer_refuses_a_token_above_8_kib(issuer: TokenIssuer) -> None:
    with pytest.raises(IssuanceError, match="8192"):
        issue(issuer, scope=[f"target-{i:05d}-*" for i in range(600)])


def test_confirmation_needs_exactly_one_binding() -> None:
    with pytest.raises(ValueError):
        Confirmation()
    with pytest.raises(ValueError):
        Confirmation(jkt=JKT, x5t_s256="abc")
    with pytest.raises(ValueError):
        Confirmation(jkt="")


# --- expiry and time ------------------------------------------------------------------


def test_expired_token_is_refused(ring: KeyRing, issuer: TokenIssuer, clock: Clock) -> None:
    token, claims = issue(issuer)
    verifier = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock, leeway=5)
    clock.now = claims.exp + 4.9
    verifier.verify(token)  # within leeway
    fresh = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock, leeway=5)
    clock.now = claims.exp + 5
    with pytest.raises(TokenExpired) as info:
        fresh.verify(token)
    assert info.value.code == "invalid_token"
    assert reason(info) == "access token expired"


def test_not_yet_valid_token_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    token = signed(ring, nbf=int(T0) + 60)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "token not yet valid"
    assert verifier.cached == 0


def test_token_issued_in_the_future_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(signed(ring, iat=int(T0) + 6))
    assert reason(info) == "token issued in the future"
    verifier.verify(signed(ring, iat=int(T0) + 5))  # within leeway


# --- algorithm attacks ----------------------------------------------------------------


def test_alg_none_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    header = jose.b64url_encode(
        b'{"alg":"none","typ":"at+jwt","kid":"%s"}' % ring.active.kid.encode()
    )
    body = jose.b64url_encode(jose.json_bytes(payload_of()))
    for signature in ("", jose.b64url_encode(bytes(64))):
        with pytest.raises(TokenInvalid):
            verifier.verify(f"{header}.{body}.{signature}")
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(f"{header}.{body}.{jose.b64url_encode(bytes(64))}")
    assert reason(info) == "unsupported token algorithm"


@pytest.mark.parametrize("alg", ["None", "NONE", "eddsa", "EdDSA ", "Ed25519", "ES256", "HS512"])
def test_other_alg_spellings_are_refused(ring: KeyRing, verifier: TokenVerifier, alg: str) -> None:
    token = forge(header_of(ring, alg=alg), payload_of(), ring.active.sign)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "unsupported token algorithm"


@pytest.mark.parametrize(
    "secret_form", ["raw", "pem", "jwk-x"], ids=["raw-bytes", "pem", "jwk-x-string"]
)
def test_hs256_signed_with_the_public_key_is_refused(
    ring: KeyRing, verifier: TokenVerifier, secret_form: str
) -> None:
    public = ring.active.public_key
    secret = {
        "raw": public.public_bytes(Encoding.Raw, PublicFormat.Raw),
        "pem": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
        "jwk-x": ring.active.public_jwk()["x"].encode(),
    }[secret_form]
    token = forge(
        header_of(ring, alg="HS256"),
        payload_of(),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest() * 2,  # 64 bytes
    )
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "unsupported token algorithm"
    exact = forge(
        header_of(ring, alg="HS256"),
        payload_of(),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    with pytest.raises(TokenInvalid):
        verifier.verify(exact)


def test_rs256_header_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = forge(
        header_of(ring, alg="RS256"),
        payload_of(),
        lambda data: rsa_key.sign(data, padding.PKCS1v15(), hashes.SHA256()),
    )
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "unsupported token algorithm"  # refused before the signature
    short = forge(header_of(ring, alg="RS256"), payload_of(), ring.active.sign)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(short)
    assert reason(info) == "unsupported token algorithm"


def test_es256_signed_token_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    token = forge(header_of(ring, alg="ES256"), payload_of(), lambda d: jose.sign("ES256", key, d))
    with pytest.raises(TokenInvalid, match="unsupported token algorithm"):
        verifier.verify(token)


# --- header attacks -------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "jwt", "dpop+jwt", "application/at+jwt", None])
def test_wrong_typ_is_refused(ring: KeyRing, verifier: TokenVerifier, typ: str | None) -> None:
    header = {k: v for k, v in header_of(ring, typ=typ).items() if v is not None}
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(forge(header, payload_of(), ring.active.sign))
    assert reason(info) == "wrong token type"


@pytest.mark.parametrize(
    "extra",
    [
        {"jku": "https://evil.example/jwks.json"},
        {"x5u": "https://evil.example/cert.pem"},
        {"jwk": {"kty": "OKP", "crv": "Ed25519", "x": "AA"}},
        {"crit": ["exp"]},
        {"cty": "JWT"},
    ],
)
def test_unexpected_header_members_are_refused(
    ring: KeyRing, verifier: TokenVerifier, extra: dict[str, Any]
) -> None:
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(forge({**header_of(ring), **extra}, payload_of(), ring.active.sign))
    assert reason(info) == "unexpected token header"


def test_unknown_kid_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    token = forge(header_of(ring, kid="not-a-kid"), payload_of(), ring.active.sign)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "unknown signing key"


def test_non_string_kid_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    token = forge(header_of(ring, kid=["x"]), payload_of(), ring.active.sign)
    with pytest.raises(TokenInvalid, match="unknown signing key"):
        verifier.verify(token)


def test_token_signed_by_another_key_with_the_same_kid_is_refused(
    ring: KeyRing, verifier: TokenVerifier
) -> None:
    intruder = Ed25519PrivateKey.generate()
    token = forge(header_of(ring), payload_of(), intruder.sign)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "bad signature"


def test_duplicate_header_member_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    raw = b'{"alg":"EdDSA","typ":"at+jwt","kid":"%s","alg":"none"}' % ring.active.kid.encode()
    head = jose.b64url_encode(raw)
    body = jose.b64url_encode(jose.json_bytes(payload_of()))
    sig = jose.b64url_encode(ring.active.sign(f"{head}.{body}".encode()))
    with pytest.raises(TokenInvalid, match="malformed token"):
        verifier.verify(f"{head}.{body}.{sig}")


# --- tampering ------------------------------------------------------------------------


def test_tampered_payload_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, claims = issue(issuer)
    head, _, sig = token.split(".")
    doc = claims.to_json() | {"scope": ["*"]}
    body = jose.b64url_encode(jose.json_bytes(doc))
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(f"{head}.{body}.{sig}")
    assert reason(info) == "bad signature"


def test_tampered_signature_is_refused(issuer: TokenIssuer, verifier: TokenVerifier) -> None:
    token, _ = issue(issuer)
    head, body, sig = token.split(".")
    raw = bytearray(jose.b64url_decode(sig))
    raw[10] ^= 0x40
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(f"{head}.{body}.{jose.b64url_encode(bytes(raw))}")
    assert reason(info) == "bad signature"


def test_non_canonical_base64_variant_is_refused(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token, _ = issue(issuer)
    head, body, sig = token.split(".")
    # 64 bytes -> 86 characters, the last carries 4 unused bits: set one of them.
    last = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variant = sig[:-1] + last[last.index(sig[-1]) | 1]
    assert variant != sig
    for bad in (f"{head}.{body}.{variant}", f"{head}.{body}.{sig}==", f"{head}.{body}.{sig}."):
        with pytest.raises(TokenInvalid, match="malformed token"):
            verifier.verify(bad)


def test_duplicate_payload_member_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    head = jose.b64url_encode(jose.json_bytes(header_of(ring)))
    raw = jose.json_bytes(payload_of())[:-1] + b',"aud":"someone-else"}'
    body = jose.b64url_encode(raw)
    sig = jose.b64url_encode(ring.active.sign(f"{head}.{body}".encode()))
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(f"{head}.{body}.{sig}")
    assert reason(info) == "malformed token payload"


def test_token_above_8_kib_is_refused_before_parsing(verifier: TokenVerifier) -> None:
    with pytest.raises(TokenInvalid, match="malformed token"):
        verifier.verify("a" * (MAX_TOKEN_SIZE + 1))


# --- audience, issuer, claims ---------------------------------------------------------


def test_wrong_audience_is_refused(ring: KeyRing, clock: Clock, verifier: TokenVerifier) -> None:
    other = TokenIssuer(ring, issuer=ISS, audience="some-other-service", clock=clock)
    token, _ = issue(other)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "wrong audience"


def test_audience_array_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    with pytest.raises(TokenInvalid, match="aud"):
        verifier.verify(signed(ring, aud=[AUD]))


def test_wrong_issuer_is_refused(ring: KeyRing, clock: Clock, verifier: TokenVerifier) -> None:
    other = TokenIssuer(ring, issuer="https://evil.example", audience=AUD, clock=clock)
    token, _ = issue(other)
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(token)
    assert reason(info) == "wrong issuer"


@pytest.mark.parametrize(
    ("changes", "claim"),
    [
        ({"cnf": None}, "cnf"),
        ({"cnf": {}}, "cnf"),
        ({"cnf": {"jkt": JKT, "x5t#S256": "abc"}}, "cnf"),
        ({"cnf": {"jwk": {"kty": "OKP"}}}, "cnf"),
        ({"cnf": {"jkt": 5}}, "cnf"),
        ({"exp": None}, "exp"),
        ({"exp": float(T0 + 600)}, "exp"),
        ({"iat": True}, "iat"),
        ({"sub": ""}, "sub"),
        ({"jti": None}, "jti"),
        ({"task": {"id": "t"}}, "task.purpose"),
        ({"task": "t"}, "task"),
        ({"scope": "billing-*"}, "scope"),
        ({"scope": ["a", 1]}, "scope"),
        ({"runtime": {"id": "r", "labels": {"a": 1}}}, "runtime.labels"),
        ({"act": {"act": {"sub": "x"}}}, "act.sub"),
        ({"agent": 7}, "agent"),
    ],
)
def test_missing_or_mistyped_claims_are_refused(
    ring: KeyRing, verifier: TokenVerifier, changes: dict[str, Any], claim: str
) -> None:
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(signed(ring, **changes))
    assert claim in reason(info)


def test_deep_actor_chain_is_refused(ring: KeyRing, verifier: TokenVerifier) -> None:
    act: dict[str, Any] = {"sub": "a0"}
    for i in range(1, 10):
        act = {"sub": f"a{i}", "act": act}
    with pytest.raises(TokenInvalid, match="act"):
        verifier.verify(signed(ring, act=act))


def test_unknown_claims_are_ignored(ring: KeyRing, verifier: TokenVerifier) -> None:
    assert verifier.verify(signed(ring, future_claim={"x": 1})).sub == "billing-bot-4"


# --- key rotation ---------------------------------------------------------------------


def test_rotated_key_verifies_during_the_overlap_and_not_after(
    ring: KeyRing, issuer: TokenIssuer, clock: Clock
) -> None:
    old_token, _ = issue(issuer)
    old_kid = ring.active.kid
    # A token signed by the old key whose exp lies beyond the overlap (forged with the key:
    # the issuer itself never issues one, see test_issuer_refuses_a_cap_longer_than_...).
    long_lived = signed(ring, exp=int(T0) + 10_000)
    clock.now = T0 + 100
    ring.rotate(clock.now)
    new_token, new_claims = issue(issuer)
    assert ring.active.kid != old_kid
    during = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock)
    during.verify(old_token)
    during.verify(long_lived)
    assert during.verify(new_token) == new_claims
    clock.now = T0 + 100 + 3600
    after = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock)
    with pytest.raises(TokenInvalid) as info:
        after.verify(long_lived)
    assert reason(info) == "unknown signing key"
    with pytest.raises(TokenInvalid, match="no longer accepted"):
        during.verify(long_lived)  # the cached entry is refused too


# --- the verification cache -----------------------------------------------------------


def test_second_verification_is_a_cache_hit_without_signature_check(
    issuer: TokenIssuer, verifier: TokenVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    token, claims = issue(issuer)
    assert verifier.verify(token) == claims
    assert verifier.cached == 1

    def no_verification(*args: object) -> bool:
        raise AssertionError("signature verified again")

    monkeypatch.setattr(jose, "verify_signature", no_verification)
    assert verifier.verify(token) is verifier.verify(token)


def test_cache_never_serves_a_token_whose_signature_was_not_checked(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    token, _ = issue(issuer)
    verifier.verify(token)
    head, body, sig = token.split(".")
    raw = bytearray(jose.b64url_decode(sig))
    raw[0] ^= 1
    with pytest.raises(TokenInvalid, match="bad signature"):
        verifier.verify(f"{head}.{body}.{jose.b64url_encode(bytes(raw))}")
    assert verifier.cached == 1


def test_cache_hit_rechecks_expiry_against_the_clock(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    token, claims = issue(issuer)
    verifier.verify(token)
    clock.now = claims.exp + 5
    with pytest.raises(TokenExpired):
        verifier.verify(token)
    assert verifier.cached == 0  # dropped


def test_cache_hit_rechecks_nbf_if_the_clock_steps_back(
    issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    token, _ = issue(issuer)
    verifier.verify(token)
    clock.now = T0 - 60
    with pytest.raises(TokenInvalid, match="not yet valid"):
        verifier.verify(token)


def test_cache_hit_refused_once_the_signing_key_is_removed(
    ring: KeyRing, issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    token, _ = issue(issuer)
    verifier.verify(token)
    leaked = ring.active.kid
    ring.rotate(clock.now)
    verifier.verify(token)  # still in its overlap
    ring.remove(leaked)
    with pytest.raises(TokenInvalid, match="no longer accepted"):
        verifier.verify(token)
    assert verifier.cached == 0


def test_cache_is_bounded_lru(ring: KeyRing, issuer: TokenIssuer, clock: Clock) -> None:
    verifier = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock, cache_size=2)
    tokens = [issue(issuer)[0] for _ in range(3)]
    verifier.verify(tokens[0])
    verifier.verify(tokens[1])
    verifier.verify(tokens[0])  # most recent now
    verifier.verify(tokens[2])  # evicts tokens[1]
    assert verifier.cached == 2
    for token in tokens:
        verifier.verify(token)  # evicted entries are verified in full again


def test_cache_can_be_disabled(issuer: TokenIssuer, ring: KeyRing, clock: Clock) -> None:
    verifier = TokenVerifier(ring, issuer=ISS, audience=AUD, clock=clock, cache_size=0)
    token, claims = issue(issuer)
    assert verifier.verify(token) == claims
    assert verifier.cached == 0


def test_failed_verification_is_not_cached(ring: KeyRing, verifier: TokenVerifier) -> None:
    with pytest.raises(TokenInvalid):
        verifier.verify(signed(ring, aud="other"))
    assert verifier.cached == 0


# --- errors ---------------------------------------------------------------------------


def test_errors_carry_their_wire_mapping() -> None:
    error = TokenRevoked("agent killed by operator")
    assert error.status == 401
    assert error.code == "invalid_token"
    assert error.challenge() == (
        'DPoP error="invalid_token", error_description="agent killed by operator"'
    )
    assert TokenInvalid('a "quoted"\r\nreason').challenge("Bearer") == (
        'Bearer error="invalid_token", error_description="a \\"quoted\\"reason"'
    )
    assert isinstance(BindingMismatch(), TokenInvalid)


# --- RFC 8705 certificate binding -----------------------------------------------------


def _certificate(common_name: str) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


def test_mtls_bound_token_checks_the_peer_certificate(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    cert = _certificate("billing-bot-4")
    token, _ = issue(issuer, cnf=Confirmation(x5t_s256=x5t_s256(cert)))
    claims = verifier.verify(token)
    check_binding(claims, cert)
    with pytest.raises(BindingMismatch, match="does not match"):
        check_binding(claims, _certificate("billing-bot-4"))
    with pytest.raises(BindingMismatch, match="no client certificate"):
        check_binding(claims, None)


def test_dpop_bound_token_is_not_accepted_as_mtls_bound(
    issuer: TokenIssuer, verifier: TokenVerifier
) -> None:
    claims = verifier.verify(issue(issuer)[0])
    with pytest.raises(BindingMismatch, match="not bound to a client certificate"):
        check_binding(claims, _certificate("x"))


def test_x5t_s256_is_base64url_sha256_of_the_der() -> None:
    cert = _certificate("x")
    assert jose.b64url_decode(x5t_s256(cert)) == hashlib.sha256(cert).digest()
    with pytest.raises(ValueError):
        x5t_s256(b"")


def test_signing_key_generate_is_usable_directly() -> None:
    key = SigningKey.generate(T0)
    assert jose.verify_signature("EdDSA", key.public_key, key.sign(b"m"), b"m")
    assert not jose.verify_signature("ES256", key.public_key, key.sign(b"m"), b"m")


def test_remembered_header_does_not_outlive_its_key(
    ring: KeyRing, issuer: TokenIssuer, verifier: TokenVerifier, clock: Clock
) -> None:
    first, _ = issue(issuer)
    second, _ = issue(issuer)
    verifier.verify(first)  # the header of the old key is now remembered
    old = ring.active.kid
    ring.rotate(clock.now)
    ring.remove(old)
    assert second.split(".")[0] == first.split(".")[0]
    with pytest.raises(TokenInvalid) as info:
        verifier.verify(second)
    assert reason(info) == "unknown signing key"
